"""Five-field cron expressions, checked when params.yaml loads rather than when Prefect reads them.

`schedule.cron: "61 25 * * *"` used to pass `fuseline check` and crash `fuseline serve` with
Prefect's `ValueError: Invalid cron string`. This is the grammar of classic (Vixie) cron:
per field `*`, a number, a name (`jan`, `mon`), a range `a-b`, a step after `*` or a range
(`*/15`, `8-18/2`), and lists of those; in the day fields also `?` (any) and, as the whole
day-of-month, `L` (the month's last day). Every expression it accepts, Prefect's own parser
(croniter) accepts and can schedule: tests/bad_inputs/test_round_three_settings.py checks
that on generated expressions. It is stricter than croniter where croniter guesses (`5/15`,
a reversed range `9-3`, a step longer than its field, `L` inside a list) and it refuses a
day that no listed month has (`0 0 31 2 *`), which Prefect accepts and never schedules.

Pure Python on purpose: importing Prefect here, from the config every stage loads, would
freeze Prefect's settings before flows/_runtime.py chooses the API server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years count
_ITEM = re.compile(r"^(?P<base>\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/(?P<step>[0-9]+))?$")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    any_marks: tuple[str, ...] = ()  # whole-field spellings of "any" besides `*`


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, any_marks=("?",)),
    _Field("month", 1, 12, names=_MONTHS),
    _Field("day-of-week", 0, 7, names=_DAYS, any_marks=("?",)),  # 0 and 7 are Sunday
)


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a cron schedule that runs, or None when it is one.

    The reason names the field and the part of it that is wrong, e.g. "minute field '61':
    61 is outside 0-59".
    """
    fields = expression.split()
    if len(fields) != len(_FIELDS):
        return f"expected a 5-field cron expression like '0 3 * * *', got {expression!r}"
    values: list[set[int] | None] = []
    for spec, text in zip(_FIELDS, fields, strict=True):
        try:
            values.append(_field_values(spec, text))
        except ValueError as err:
            return f"{spec.name} field {text!r}: {err} (in {expression!r})"
    return _never_runs(values[2], values[3], expression)


def _field_values(spec: _Field, text: str) -> set[int] | None:
    """The values a field matches; None when it matches every value (`*`, `?`, or the last day `L`)."""
    if text == "*" or text in spec.any_marks:
        return None
    if spec.name == "day-of-month" and text.upper() == "L":
        return None  # the last day exists in every month
    matched: set[int] = set()
    for item in text.split(","):
        matched |= _item_values(spec, item)
    return matched


def _item_values(spec: _Field, item: str) -> set[int]:
    if item.upper() == "L" and spec.name == "day-of-month":
        raise ValueError("'L' (the last day) must stand alone, not in a list of days")
    if not item:
        raise ValueError("a list item is empty")
    found = _ITEM.match(item)
    if found is None:
        raise ValueError(f"{item!r} is not a value, a range a-b, or a step */n or a-b/n")
    base, step_text = found.group("base"), found.group("step")
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, last = base.split("-")
        low, high = _value(spec, first), _value(spec, last)
        if low > high:
            raise ValueError(f"the range {base!r} runs backwards")
    elif step_text is not None:
        raise ValueError(f"a step needs '*' or a range before it, e.g. '*/{step_text}'")
    else:
        low = high = _value(spec, base)
    step = 1 if step_text is None else int(step_text)
    if not 1 <= step <= spec.high:
        raise ValueError(f"the step {step} must be between 1 and {spec.high}")
    return set(range(low, high + 1, step))


def _value(spec: _Field, text: str) -> int:
    if text.lower() in spec.names:
        return spec.low + spec.names.index(text.lower())
    if not (text.isascii() and text.isdigit()) or len(text) > 2:
        hint = f" or a name like {spec.names[1]!r}" if spec.names else ""
        raise ValueError(f"{text!r} is not a number{hint}")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{number} is outside {spec.low}-{spec.high}")
    return number


def _never_runs(days: set[int] | None, months: set[int] | None, expression: str) -> str | None:
    """A day of the month that none of the listed months has: the schedule would never run."""
    if days is None:
        return None
    months = months if months is not None else set(range(1, 13))
    if any(day <= _DAYS_IN_MONTH[month - 1] for day in days for month in months):
        return None
    shown_months = ", ".join(_MONTHS[m - 1] for m in sorted(months))
    shown_days = ", ".join(str(d) for d in sorted(days))
    return f"{expression!r} never runs: no day {shown_days} in {shown_months}"
