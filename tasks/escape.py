"""User strings made safe for the medium they are drawn into: a figure, Markdown, a log line.

Class labels, column names, file paths and category values come from the user's data, and
each medium gives some characters a meaning: `$` starts mathtext in matplotlib, a backtick
ends a Markdown code span, `<script>` is live HTML in a Markdown page, `|` splits a table
cell, a newline starts a forged log line. Every such string passes through one function
here on its way out, so the set of dangerous characters is known in one place.

Figures need less than the others: `tasks.evaluate.figures.to_png` turns mathtext and TeX off
for every text it renders, so a figure string only has to be visible and short.
"""

from __future__ import annotations

import logging

FIGURE_LIMIT = 40  # characters of a label drawn in a figure; a 10 000-character one would not fit
_ELLIPSIS = "…"

# Inline Markdown punctuation that can start emphasis, code, links, strikethrough or escapes.
# `<`, `>` and `&` become entities instead: CommonMark and Python-Markdown both decode those,
# while Python-Markdown leaves a backslash before `<` and then passes the tag through as HTML.
_MARKDOWN_ESCAPES = {c: "\\" + c for c in "\\`*_[]~"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_MARKDOWN_TABLE = str.maketrans(_MARKDOWN_ESCAPES)


def visible(value: object) -> str:
    """`value` as one line of printable text: control, format and separator characters escaped.

    A newline, carriage return, escape sequence or bidi override in a label is shown as its
    Python escape (`\\n`, `\\x1b`, `\\u202e`) instead of acting on the page or terminal.
    """
    raw = str(value)
    if raw.isprintable():
        return raw
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in raw)


def figure(value: object, limit: int = FIGURE_LIMIT, legend: bool = False) -> str:
    """A label for a figure: one printable line of at most `limit` characters.

    A legend silently drops an entry whose label is empty or starts with `_` (matplotlib's
    "no legend" convention), so with `legend` such a label gets a leading space.
    """
    shown = visible(str(value)[: limit + 1])
    if len(shown) > limit:
        shown = shown[: limit - 1] + _ELLIPSIS
    if legend and (not shown or shown.startswith("_")):
        shown = " " + shown
    return shown


def code(value: object) -> str:
    """An inline Markdown code span that shows `value` literally, whatever it holds.

    The fence is one backtick longer than the longest run of backticks inside, and a space
    pads content that starts or ends with a backtick or a space (CommonMark strips exactly
    one from each side, unless the content is all spaces). Inside a code span `<`, `*` and
    `_` are literal, so HTML stays text.
    """
    shown = visible(value)
    if not shown:
        return "` `"
    fence = "`" * (_longest_backtick_run(shown) + 1)
    if (shown[0] in "` " or shown[-1] in "` ") and shown.strip(" "):  # all spaces: nothing is stripped
        shown = f" {shown} "
    return f"{fence}{shown}{fence}"


def text(value: object) -> str:
    """Inline Markdown text that renders as `value`: no emphasis, link, code span or HTML."""
    return visible(value).translate(_MARKDOWN_TABLE)


def cell(value: object) -> str:
    """One GFM table cell of already-rendered Markdown: a `|` inside would end the cell early.

    GFM reads `\\|` as a pipe even inside a code span, so this applies to every cell whole.
    """
    return str(value).replace("|", "\\|")


def table_value(value: object) -> object:
    """A value for a Prefect table artifact: strings one line, with no `<` that could open a tag.

    The table is JSON, shown by Prefect's default UI as plain text; the older UI renders each
    string cell as Markdown with HTML. Only `<` is turned into `&lt;` (which that Markdown shows
    as `<`), so an ordinary name reads the same in both; numbers and None pass unchanged.
    """
    return visible(value).replace("<", "&lt;") if isinstance(value, str) else value


def log(value: object) -> str:
    """`value` for a log line: as it is when printable, else its repr, so it cannot forge lines."""
    line = str(value)
    return line if line.isprintable() else repr(line)


def _longest_backtick_run(shown: str) -> int:
    longest = run = 0
    for ch in shown:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


# Loggers whose records carry user strings as %-arguments: ours, and Prefect's run loggers that
# our flows and tasks log through. A library's own records are left as the library wrote them.
_ESCAPED_LOGGERS = ("tasks", "flows", "prefect.flow_runs", "prefect.task_runs")


def escape_log_arguments() -> None:
    """Make every string argument of our log records one printable line, once per process.

    A column name, label or path holding a newline or an escape sequence would otherwise forge
    a log line or drive the terminal. Escaping the arguments where the record is made covers
    every `log.info("... %s", name)` in the code without each call remembering to.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_fuseline_escapes", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.startswith(_ESCAPED_LOGGERS) and record.args:
            record.args = _escaped_arguments(record.args)
        return record

    factory._fuseline_escapes = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _escaped_arguments(arguments: object) -> object:
    if isinstance(arguments, tuple):
        return tuple(log(a) if isinstance(a, str) else a for a in arguments)
    if isinstance(arguments, dict):
        return {k: log(v) if isinstance(v, str) else v for k, v in arguments.items()}
    return arguments
