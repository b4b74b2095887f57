"""A season of operation: scheduled monitoring and retraining over many data drops, scored by an oracle.

    python bench/lifecycle.py [--json] [--drops 24] [--rows 1500] [--dataset petfinder]
                              [--events 4:covariate,7:text_mix] [--text-model tfidf] [--images]
                              [--oracle-rows 5000] [--cost-probe-rows 16000]
                              [--workdir .cache/bench/lifecycle] [--keep]

A fresh git + DVC project (this checkout's code and dvc.yaml, as bench/scale.py makes one;
text + tabular columns, `encoders.text.model: tfidf`, `train.preset: fast`) gets an initial
Parquet source and is trained and promoted once (drop 0, the cold run: every stage, an empty
row cache). Then each drop adds new labelled rows (5 % of the rows so far) to the source,
rewritten atomically, and runs the scheduled path in the order a day runs it: the monitor
deployment's flow, then the retrain deployment's flow, each called with the parameters its
`deployment()` schedules (`flows.monitor.monitor`, `flows.deploy.retrain`), in this process,
against one Prefect server started here. Retrain is the real thing: `dvc repro` (stage
subprocesses, the row cache) and promote-if-not-worse into the registry.

Events. Each data event is an incident confined to its drop's new rows: the rows stay in
the source afterwards, the next drop's rows are drawn as before. That is what makes quiet
drops possible at all: the monitor's reference is the served model's train rows (the whole
history), so a shift that stayed would be drift at every later run until those rows
outnumber the old ones. Default drops (a season shorter than 20 drops keeps those that fit;
`--events` places them anywhere):

    4 covariate      price (log scale) +1 sd; P(label | inputs) unchanged
    7 text_mix       the items' mix: all plastic or cardboard (a budget line), as titles and
                     descriptions say; chosen by their text alone, so P(label | inputs) holds
    10 concept       price's effect on the label reverses and triples; inputs unchanged
    13 empty_column  description arrives empty (null) in every new row
    16 new_category  30 % of the new rows are in a category never seen ("outdoor")
    19 split_seed    data.split.seed 42 -> 43 in params.yaml (stays)

Demo rows come from the demo generator (tasks.data.demo._sample: its columns and its latent
parts), with two changes made here rather than in tasks/data/demo.py, whose output the
demo's dvc.lock pins: each drop has its own seed and id range, and the label is score > 0
(the population median of the demo's score) instead of the draw's own median, so a batch
that shifts does not re-centre its labels. Events act on the latent parts, so the label
moves exactly as the generator's rule says (a price moved by d sd adds d sqrt(1/2) to the
score). On `--dataset petfinder` (../shared/data, text + tabular, multiclass; skipped with a
message where absent) half the `train` split is the initial table and the rest is released
in PetID order, evenly over the drops (about 30 rows each over 24), and the same events are
made by choosing or editing real rows (the oldest pets or the longest descriptions of the
next rows, labels reversed, one State held back until its drop); the oracle pool is the
published `test` split, the same 1,500 rows every drop.

What is scored (every count in the JSON; the per-drop detail, with each monitor run's
strongest checks, in lifecycle.json under --workdir):

- detection: an event counts as detected when its own signal fires at its drop or the next:
  a drifted check on its column (covariate: price; text_mix: a text column; empty_column:
  description; new_category: category; concept: the monitor's own `performance` check, a
  realized metric significantly below CBPE's estimate for the same rows), the
  retrain's reason naming data.split.seed (split_seed).
- quiet runs: drops with no event whose monitored batch (the rows the served model has not
  seen) holds no event rows either; a quiet run with a drifted check or a performance alarm
  is a false alarm. A drop after an event whose rows the served model was not retrained on
  (the candidate was kept) is therefore not quiet: those rows are still in its batch.
- promotions: per retrain, the champion (the promoted model before it) and the candidate
  (models/ after it) are scored with the production Predictor on an oracle pool drawn for
  that drop (5,000 rows of the base distribution, the traffic the promoted model will serve
  next: events are incidents; ids no source holds). Decisions where the oracle's difference
  exceeds twice schedule.tolerance are counted; the oracle says promote when the candidate
  is better. worse_promoted: promoted while worse on the oracle by more than the tolerance.
- leaked_rows: the ids the flows actually compared on, recorded by wrapping the functions
  that choose them (flows.monitor.new_batch: the monitored batch; tasks.serve.champion.
  held_out_by_both: the test rows of the promotion's comparison) and looked up in each
  model's lineage.parquet train and val rows. The wrappers call the real functions unchanged.
- estimate_abs_error: mean |CBPE estimate - realized| over monitor runs whose batch holds no
  concept rows. The realized metric is itself measured on the batch (about 80-250 rows), so
  its sampling error is part of this number; `estimate_oracle_abs_error` compares the
  estimate with the served model's metric on the oracle pool instead (quiet runs only, where
  the batch and the pool share a distribution), and `realized_sd` is the mean standard
  error the realized interval implies.
- cost: a drop's retrain time (median over the drops) over the cold run's. The season's own
  project encodes text with tfidf, whose refit re-encodes every row in a second or two, so
  there the row cache has nothing to save and a drop costs what the cold run costs: process
  start-up and imports, DVC's own work, training and evaluation (`season_cost_ratio`, about
  0.9-1.2). After the season a cost probe (`--cost-probe-rows`, default 16,000; 0 skips it)
  plays a second fresh project where encoding is the cold run's cost, as it is for a user of
  pretrained encoders: the demo's rows with their photos on the shipped image encoder and
  all-MiniLM-L6-v2 for text, a cold run and two drops of 5 %, no events. Its ratio is
  `incremental_cost_ratio`, the criterion's number; `cost_probe` holds its seconds.
  `stage_seconds` splits both by flow (Prefect's run times of the stage flows) and
  `retrain_outside_stages_per_drop` is what a drop's retrain spends outside them (each
  stage's process start-up and imports, DVC's own work), so where the time goes is visible.
  `--drops 2 --images --text-model minilm --rows N --cost-probe-rows 0` plays the probe alone.

Mistaken edits: no data event makes two consecutive models differ by more than twice the
tolerance on the oracle (each retrain adds 5 % rows of the same traffic), so on their own the
promotion counts would test nothing. Two drops therefore carry an operator's mistake in
params.yaml, made before that drop's retrain and reverted before the next drop, as someone
who notices the next morning would: at 21 the numeric columns are left out of
`data.columns`, at 23 the text columns (`--edits` moves them). The candidate trained that day
is clearly worse on the oracle, so the gate must keep the served model: these are the
decisions `promotions_total` counts. A wrongly promoted one would also be scored at the next
drop, where the reverted candidate beats it.

The timeline PNG: events (vertical lines), drift flags, estimated and realized metric,
oracle scores, promotions. `--json` prints the summary as one JSON line, last.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.atomic import write_bytes, write_json, write_parquet  # noqa: E402
from tasks.monitor.performance import PERFORMANCE_COLUMN  # noqa: E402

PORT = 4291
SHARED = REPO.parent / "shared" / "data"
EVENT_KINDS = ("covariate", "text_mix", "concept", "empty_column", "new_category", "split_seed")
DEFAULT_EVENTS = {
    4: "covariate",
    7: "text_mix",
    10: "concept",
    13: "empty_column",
    16: "new_category",
    19: "split_seed",
}
DROP_SHARE = 0.05  # each drop adds this share of the rows so far
ORACLE_ROWS = 5000
# The cost probe (cost_probe_spec): encoding is a cold run's cost at this size (6,000 rows: 0.32)
COST_PROBE_ROWS = 16000
COST_PROBE_DROPS = 2
COST_PROBE_ORACLE_ROWS = 300
DATA_EVENTS = frozenset(EVENT_KINDS) - {"split_seed"}  # events that live in rows
EDIT_ROLES = ("numeric", "categorical", "text")  # a mistaken edit empties one role's column list
DEFAULT_EDITS = {21: "numeric", 23: "text"}

# demo events: sizes chosen to be plain incidents, not needles
PRICE_SHIFT = 1.0  # sd of log price
BUDGET = ("plastic", "cardboard")  # text_mix: every new item is of these materials (a budget line)
CONCEPT = 4.0  # the price part's weight moves from +1 to 1 - CONCEPT (reversed, tripled)
NEW_CATEGORY, NEW_CATEGORY_SHARE, NEW_CATEGORY_EFFECT = "outdoor", 0.3, 1.5


# --- the season's schedule and scoring (pure: tests/test_bench_lifecycle.py) ----------------


def event_schedule(drops: int, spec: str | None = None) -> dict[int, str]:
    """Drop number -> event kind: `spec` ("4:covariate,7:concept") or the defaults that fit in `drops`."""
    if spec is None:
        return {drop: kind for drop, kind in DEFAULT_EVENTS.items() if drop <= drops}
    events: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        drop, _, kind = part.partition(":")
        if not drop.isdigit() or not 1 <= int(drop) <= drops or kind not in EVENT_KINDS:
            raise SystemExit(
                f"--events {part!r}: expected DROP:KIND, DROP in 1..{drops}, KIND in {EVENT_KINDS}"
            )
        if int(drop) in events:
            raise SystemExit(f"--events: drop {drop} has two events")
        events[int(drop)] = kind
    return events


def edit_schedule(drops: int, events: dict[int, str], spec: str | None = None) -> dict[int, str]:
    """Drop number -> the column role a mistaken params.yaml edit empties for that drop's retrain."""
    if spec is None:
        chosen = {d: role for d, role in DEFAULT_EDITS.items() if d <= drops}
    else:
        chosen = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            drop, _, role = part.partition(":")
            if not drop.isdigit() or not 1 <= int(drop) <= drops or role not in EDIT_ROLES:
                raise SystemExit(
                    f"--edits {part!r}: expected DROP:ROLE, DROP in 1..{drops}, ROLE in {EDIT_ROLES}"
                )
            chosen[int(drop)] = role
    clash = sorted(set(chosen) & set(events))
    if clash:
        raise SystemExit(f"--edits: drops {clash} already have an event; an edit needs a drop of its own")
    return chosen


def performance_alarm(flags: Sequence[dict[str, str]]) -> bool:
    """The monitor's own realized-metric check drifted: labels worse than CBPE promised.

    tasks/monitor/performance.shortfall_check: the realized metric significantly below the
    estimate for the same rows, by at least monitor.threshold.performance. The estimate
    follows covariate shift, so this is the product's alarm for a concept change.
    """
    return any(f["column"] == PERFORMANCE_COLUMN for f in flags)


def oracle_verdict(
    promoted: bool, candidate: float, champion: float, tolerance: float, higher_is_better: bool = True
) -> dict[str, Any]:
    """How the oracle judges one promotion decision.

    `counted`: the oracle's difference exceeds twice the tolerance (a closer call is no test of
    the decision); `agree`: then the decision matches the oracle's (promote the better model);
    `worse_promoted`: promoted although worse than the champion by more than the tolerance.
    """
    gain = (candidate - champion) if higher_is_better else (champion - candidate)
    counted = abs(gain) > 2 * tolerance
    return {
        "gain": gain,
        "counted": counted,
        "agree": counted and promoted == (gain > 0),
        "worse_promoted": promoted and gain < -tolerance,
    }


def leaked(ids: Iterable[str], lineage: pd.DataFrame) -> int:
    """How many of `ids` are train or val rows in a model's lineage (row_id, split)."""
    seen = set(lineage.loc[lineage["split"].isin(("train", "val")), "row_id"].astype(str))
    return sum(1 for i in ids if str(i) in seen)


def flags_of(checks: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The drifted checks of a monitor run, as {column, role, aspect}."""
    return [{k: str(c[k]) for k in ("column", "role", "aspect")} for c in checks if c.get("drifted")]


def strongest(checks: Sequence[dict[str, Any]], count: int = 4) -> list[str]:
    """The run's checks nearest their thresholds, one line each: what almost (or did) fire."""
    ranked = sorted(checks, key=lambda c: -float(c.get("severity") or 0.0))[:count]
    return [
        f"{c['column']} {c['aspect']}: {c['effect']} {c['score']:.3f}, p adj {c['p_adjusted']:.2g}"
        + (" DRIFT" if c.get("drifted") else "")
        for c in ranked
    ]


def signal_fired(kind: str, record: dict[str, Any], columns: dict[str, set[str]]) -> bool:
    """Did this drop's runs show the event's own signal (see the module docstring)?"""
    if kind == "split_seed":
        return "data.split.seed" in (record.get("retrain") or {}).get("reason", "")
    monitor = record.get("monitor") or {}
    if kind == "concept":
        return bool(monitor.get("performance_alarm"))
    if kind == "text_mix":
        return any(f["role"] == "text" for f in monitor.get("flags", ()))
    return any(f["column"] in columns[kind] for f in monitor.get("flags", ()))


def summarise(
    records: list[dict[str, Any]], events: dict[int, str], tolerance: float, columns: dict[str, set[str]]
) -> dict[str, Any]:
    """The season's counts from its per-drop records (drop 0, the cold run, has no monitor)."""
    by_drop = {r["drop"]: r for r in records}
    detected = {
        drop: any(signal_fired(kind, by_drop[d], columns) for d in (drop, drop + 1) if d in by_drop)
        for drop, kind in events.items()
    }
    quiet = [r for r in records if r.get("quiet")]
    false_alarms = [r["drop"] for r in quiet if r["monitor"]["flags"]]  # the performance check among them
    verdicts = [r["oracle"]["verdict"] for r in records if (r.get("oracle") or {}).get("verdict")]
    counted = [v for v in verdicts if v["counted"]]
    monitored = [
        r["monitor"] for r in records if r.get("monitor") and r["monitor"].get("estimate") is not None
    ]
    no_concept = [m for m in monitored if m.get("realized") is not None and not m.get("concept_rows")]
    quiet_oracle = [
        (r["monitor"]["estimate"], r["oracle"]["champion"])
        for r in quiet
        if r["monitor"].get("estimate") is not None and (r.get("oracle") or {}).get("champion") is not None
    ]
    sds = [(m["high"] - m["low"]) / 3.92 for m in monitored if m.get("high") is not None]
    leaks = sum(sum(r.get("leaked", {}).values()) for r in records)  # monitor, compare, oracle
    return {
        "events_total": len(events),
        "events_detected": sum(detected.values()),
        "events": [{"drop": d, "kind": k, "detected": detected[d]} for d, k in sorted(events.items())],
        "false_alarms": len(false_alarms),
        "false_alarm_drops": false_alarms,
        "quiet_runs": len(quiet),
        "promotions_total": len(counted),
        "promotions_agree": sum(v["agree"] for v in counted),
        "worse_promoted": sum(v["worse_promoted"] for v in verdicts),
        "promoted": sum(1 for r in records if (r.get("retrain") or {}).get("outcome") == "promoted"),
        "leaked_rows": leaks,
        "estimate_abs_error": _mean(abs(m["estimate"] - m["realized"]) for m in no_concept),
        "estimate_runs": len(no_concept),
        "estimate_oracle_abs_error": _mean(abs(e - o) for e, o in quiet_oracle),
        "realized_sd": _mean(sds),
        "errors": [f"drop {r['drop']}: {e}" for r in records for e in r.get("errors", ())],
    }


def done(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's acceptance criteria, each as a boolean."""
    total = summary["promotions_total"]
    ratio = summary.get("incremental_cost_ratio")
    error = summary["estimate_abs_error"]
    return {
        "events_detected": summary["events_detected"] == summary["events_total"],
        "false_alarms": summary["false_alarms"] <= 1 and summary["quiet_runs"] >= 15,
        "promotions_agree": total > 0 and summary["promotions_agree"] / total >= 0.9,
        "worse_promoted": summary["worse_promoted"] == 0,
        "leaked_rows": summary["leaked_rows"] == 0,
        "estimate_abs_error": error is not None and error <= 0.03,
        "incremental_cost": ratio is not None and ratio <= 0.25,
    }


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


# --- where the rows come from ---------------------------------------------------------------


@dataclass
class Source:
    """A season's rows: the initial table, each drop's new rows (with its event), an oracle pool."""

    name: str
    data: dict[str, Any]  # params.yaml's `data` section
    signals: dict[str, set[str]]  # event kind -> the columns whose drift is its signal
    initial: Callable[[], pd.DataFrame]
    drop: Callable[[int, int, str | None], pd.DataFrame]  # (drop, rows, event) -> new rows
    oracle: Callable[[int], pd.DataFrame]


def _seed(*parts: object) -> int:
    return zlib.crc32("-".join(map(str, parts)).encode())


def demo_rows(
    rows: int, seed: int, prefix: str, event: str | None = None, images: Path | None = None
) -> pd.DataFrame:
    """`rows` rows of the demo generator's text and tabular columns, ids `prefix`-N, label = score > 0.

    `event` changes them as the module docstring says, through the generator's latent parts.
    With `images`, each row also gets the generator's photo of its item (`photo`, a JPEG
    written there), whose part of the score the label already holds.
    """
    from tasks.data.demo import _CATEGORIES, _LOG_PRICE_MEAN, _LOG_PRICE_SD, _sample, _standardise

    pool = rows * 5 if event == "text_mix" else rows  # a third of the demo's items are budget ones
    data = _sample(max(pool, 10), seed)
    rng = np.random.default_rng([seed, 99])
    names = np.array([c[0] for c in _CATEGORIES] + [None], dtype=object)
    frame = pd.DataFrame(
        {
            "item_id": [f"{prefix}-{i:06d}" for i in range(len(data.score))],
            "title": data.titles,
            "description": data.descriptions,
            "category": names[data.category],
            "price": data.price,
        }
    )
    score = data.score.copy()
    half = math.sqrt(0.5)  # the weight of the price part and of the category part in s_tab
    if event == "covariate":
        frame["price"] = np.round(data.price * math.exp(PRICE_SHIFT * _LOG_PRICE_SD), 2)
        score += half * PRICE_SHIFT  # every row's (hidden or shown) price moved: P(label | inputs) holds
    if event == "concept":
        part = (np.log(data.price) - _LOG_PRICE_MEAN) / _LOG_PRICE_SD  # NaN where price is blank
        score -= CONCEPT * half * np.nan_to_num(part)  # a blank price says nothing either way
    if event == "new_category":
        probs = np.array([c[1] for c in _CATEGORIES])
        effect = _standardise([c[2] for c in _CATEGORIES], probs)
        chosen = (rng.random(len(score)) < NEW_CATEGORY_SHARE) & (data.category >= 0)
        score[chosen] += half * (NEW_CATEGORY_EFFECT - effect[data.category[chosen]])
        frame.loc[chosen, "category"] = NEW_CATEGORY
    frame["label"] = (score > 0).astype(np.int64)
    if event == "text_mix":  # chosen by the text alone: P(label | inputs) holds
        frame = frame[frame["title"].str.lower().str.contains("|".join(BUDGET))]
    frame = frame.head(rows)
    if images is not None:
        frame["photo"] = write_photos(data, frame.index.to_numpy(), frame["item_id"], images)
    frame = frame.reset_index(drop=True)
    if event == "empty_column":
        frame["description"] = None
    return frame


def write_photos(data: Any, rows: np.ndarray, ids: pd.Series, root: Path) -> list[str]:
    """The demo generator's JPEG of each of `rows` (positions in `data`), named by id; the names."""
    from tasks.data.demo import _render_image

    root.mkdir(parents=True, exist_ok=True)
    names = [f"{item_id}.jpg" for item_id in ids]
    for row, name in zip(rows, names, strict=True):
        write_bytes(_render_image(data, int(row)), root / name)
    return names


def demo_source(rows: int, oracle_rows: int, seed: int = 7, images: Path | None = None) -> Source:
    """The demo's rows; with `images` (a folder outside the project) its photos too, as an image column."""
    from bench.scale import params_for

    data = params_for("tfidf")["data"]
    if images is not None:
        data["columns"]["image"] = ["photo"]
        data["image_root"] = str(images)
    return Source(
        name="demo",
        data=data,
        signals={"covariate": {"price"}, "empty_column": {"description"}, "new_category": {"category"}},
        initial=lambda: demo_rows(rows, _seed(seed, "initial"), "base", images=images),
        drop=lambda drop, n, event: demo_rows(
            n, _seed(seed, "drop", drop), f"drop{drop:02d}", event, images=images
        ),
        oracle=lambda drop: demo_rows(
            oracle_rows, _seed(seed, "oracle", drop), f"oracle{drop:02d}", images=images
        ),
    )


@dataclass
class Release:
    """A shared dataset's rows released in id order, events made by choosing or editing real rows."""

    stream: pd.DataFrame  # rows not released yet, in release order
    spec: dict[str, Any]
    held: pd.DataFrame = field(default_factory=pd.DataFrame)  # the held-back category's rows

    def take(self, rows: int, event: str | None) -> pd.DataFrame:
        spec, window = self.spec, self.stream.head(rows * 3)
        if event == "covariate":  # the oldest pets of the next rows: a shift in one numeric column
            chosen = window.nlargest(rows, spec["numeric"]).index
        elif event == "text_mix":  # the longest descriptions of the next rows
            chosen = window[spec["text"]].fillna("").str.len().nlargest(rows).index
        else:
            chosen = self.stream.head(rows).index
        if event == "new_category":  # the held-back rows, a third of the drop or more
            chosen = chosen[: max(0, min(rows - len(self.held), 2 * len(self.held)))]
        out = self.stream.loc[chosen]
        self.stream = self.stream.drop(index=chosen)
        if event == "new_category":
            out, self.held = pd.concat([out, self.held]), self.held.iloc[0:0]
        out = out.copy()
        if event == "concept":  # the same inputs now mean the opposite speed
            out[spec["target"]] = spec["classes"] - 1 - out[spec["target"]]
        if event == "empty_column":
            out[spec["text"]] = None
        return out.reset_index(drop=True)


PETFINDER = {
    "file": "petfinder/petfinder.parquet",
    "id": "PetID",
    "target": "AdoptionSpeed",
    "task": "multiclass",
    "classes": 5,
    "categorical": ["Type", "Breed1", "Gender", "Color1", "MaturitySize", "FurLength", "Vaccinated",
                    "Sterilized", "Health", "State"],
    "numeric_columns": ["Age", "Quantity", "Fee", "PhotoAmt"],
    "text_columns": ["Description"],
    "numeric": "Age",  # covariate shift
    "text": "Description",  # text mix, empty column
    "held": ("State", "Melaka"),  # new category: these rows wait for the event's drop
}  # fmt: skip


def shared_source(name: str, rows: int | None, drops: int, events: dict[int, str]) -> Source:
    """A season on ../shared/data/<name>: the `train` split released in id order, `test` the oracle."""
    if name != "petfinder":
        raise SystemExit(f"--dataset {name}: only petfinder (text + tabular) is set up for a season")
    path = SHARED / PETFINDER["file"]
    if not path.is_file():
        print(f"lifecycle: {path} is absent (../shared/data is not on this machine); nothing to run")
        raise SystemExit(0)
    spec = PETFINDER
    table = pd.read_parquet(path)
    keep = [spec["id"], spec["target"], *spec["categorical"], *spec["numeric_columns"], *spec["text_columns"]]
    stream = table[table["split"] == "train"].sort_values(spec["id"])[keep].reset_index(drop=True)
    oracle = table[table["split"] == "test"][keep].reset_index(drop=True)
    column, value = spec["held"]
    holding = "new_category" in events.values()
    release = Release(stream[stream[column] != value] if holding else stream, spec)
    if holding:
        release.held = stream[stream[column] == value]
    first = rows or len(release.stream) // 2
    per_drop = max(1, (len(release.stream) - first) // max(1, drops))
    data = {
        "sources": [{"path": "items.parquet"}],
        "id": spec["id"],
        "target": spec["target"],
        "task": spec["task"],
        "columns": {
            "categorical": spec["categorical"],
            "numeric": spec["numeric_columns"],
            "text": spec["text_columns"],
        },
        "split": {"method": "hash", "seed": 42},
        "demo": None,
    }
    return Source(
        name=name,
        data=data,
        signals={"covariate": {spec["numeric"]}, "empty_column": {spec["text"]}, "new_category": {column}},
        initial=lambda: release.take(first, None),
        drop=lambda drop, n, event: release.take(per_drop, event),
        oracle=lambda drop: oracle,
    )


# --- the project and the scheduled path -------------------------------------------------------


def new_project(root: Path, source: Source, table: pd.DataFrame, text_model: str = "tfidf") -> None:
    """A fresh git + DVC project of this checkout's code with `table` as its one Parquet source."""
    from bench.scale import GIT
    from tasks.paths import copy_project_code

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    copy_project_code(REPO, root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the shipped schedule and monitor settings
    params["data"] = source.data
    params["encoders"]["text"]["model"] = text_model
    params["train"]["preset"] = "fast"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_source(root, table)
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        [*GIT, "add", "-A"],
        [*GIT, "commit", "-qm", "init"],
    ):
        subprocess.run(args, cwd=root, check=True, capture_output=True)


def write_source(root: Path, table: pd.DataFrame) -> None:
    write_parquet(pa.Table.from_pandas(table, preserve_index=False), root / "items.parquet")


def set_split_seed(root: Path, seed: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["split"]["seed"] = seed
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@contextmanager
def mistaken_edit(root: Path, role: str | None) -> Iterator[None]:
    """params.yaml with `data.columns.<role>` emptied while the block runs, then as it was."""
    if role is None:  # left alone: the params stage's first run wrote the defaults in, as a user commits
        yield
        return
    path = root / "params.yaml"
    before = path.read_text()
    params = yaml.safe_load(before)
    params["data"]["columns"][role] = []
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(before)


class Taps:
    """The ids the flows compared on, recorded by wrapping the functions that choose them.

    Each wrapper calls the real function with the same arguments and returns its result
    unchanged; it only keeps the ids. Installed once per process (the flows run in it).
    """

    def __init__(self) -> None:
        import flows.monitor as monitor_flow
        import tasks.serve.champion as champion
        from tasks.schema import ID

        self.batch: list[str] | None = None
        self.compared: list[str] | None = None
        choose_batch, held_out = monitor_flow.new_batch, champion.held_out_by_both

        def new_batch(*args: Any, **kwargs: Any) -> Any:
            batch = choose_batch(*args, **kwargs)
            self.batch = batch.rows[ID].astype(str).tolist()
            return batch

        def held_out_by_both(
            champion_meta: Any, champion_dir: Any, candidate: Any, aligned: pd.DataFrame
        ) -> Any:
            held = held_out(champion_meta, champion_dir, candidate, aligned)
            self.compared = aligned.loc[held.test, ID].astype(str).tolist()
            return held

        monitor_flow.new_batch, champion.held_out_by_both = new_batch, held_out_by_both

    def reset(self) -> None:
        self.batch = self.compared = None


@functools.cache
def process_taps() -> Taps:
    """The process's one Taps: the season and the cost probe after it share the wrappers."""
    return Taps()


def lineage_of(bundle: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(bundle) / "lineage.parquet", columns=["row_id", "split"])


class Oracle:
    """Bundles scored with the production Predictor on a labelled pool no model saw (its own row cache)."""

    def __init__(self, cache_dir: Path, target: str) -> None:
        self.cache_dir, self.target = cache_dir, target

    def score(self, bundle: Path, pool_path: Path, pool: pd.DataFrame) -> float:
        from tasks.device import pick_device
        from tasks.evaluate.evaluation import primary_score
        from tasks.features.cache import FeatureCache
        from tasks.serve.champion import label_space
        from tasks.serve.predict import file_roots, load_predictor, read_new_rows

        cache = FeatureCache(self.cache_dir)
        predictor = load_predictor(bundle, cache)
        roots = file_roots(predictor.data)
        rows = read_new_rows(pool_path, predictor.data, roots)
        predictions = predictor.predictions(rows, roots, cache, pick_device("auto"))[1]
        space = label_space(predictor.meta, predictor.meta)
        truth = pool[self.target].astype(str).reset_index(drop=True)
        known = space.known(truth)
        scores = space.scores(np.asarray(predictions)[known], predictor.meta.classes)
        return float(primary_score(space.task, space.truth(truth[known]), scores))


@dataclass
class Season:
    """One season's state as it runs: the project, the source table, which rows each event made."""

    root: Path
    source: Source
    events: dict[int, str]
    table: pd.DataFrame
    oracle: Oracle
    edits: dict[int, str] = field(default_factory=dict)  # drop -> the role a mistaken edit empties
    taps: Taps | None = None  # set once the flows are imported (after the Prefect server is up)
    flows: dict[str, Callable[[], Any]] = field(default_factory=dict)
    event_ids: dict[str, set[str]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    tolerance: float = 0.005


def scheduled_flows(params_path: str = "params.yaml") -> dict[str, Callable[[], Any]]:
    """Each deployment's flow bound to the parameters its schedule runs it with."""
    from flows.deploy import deployment as retrain_deployment
    from flows.deploy import retrain
    from flows.monitor import deployment as monitor_deployment
    from flows.monitor import monitor

    bound = {}
    for name, flow_fn, make in (
        ("monitor", monitor, monitor_deployment),
        ("retrain", retrain, retrain_deployment),
    ):
        parameters = dict(make(params_path).parameters)
        bound[name] = lambda f=flow_fn, p=parameters: f(**p)
    return bound


def champion_dir(root: Path) -> Path | None:
    from tasks.serve.promotion import current_entry, resolve_model_dir

    registry = root / "registry"
    return resolve_model_dir(registry).resolve() if current_entry(registry) else None


def run_monitor(season: Season, record: dict[str, Any]) -> None:
    """The monitor deployment's flow; its flags, performance record and the rows it watched."""
    started = time.perf_counter()
    season.taps.reset()
    summary = season.flows["monitor"]()
    performance = summary.get("performance") or {}
    batch = season.taps.batch or []
    kinds = sorted(kind for kind, ids in season.event_ids.items() if ids.intersection(batch))
    record["monitor"] = {
        "drifted": bool(summary["drifted"]),
        "flags": flags_of(summary["checks"]),
        "strongest": strongest(summary["checks"]),
        "performance_alarm": performance_alarm(flags_of(summary["checks"])),
        "batch_rows": len(batch),
        "batch_event_kinds": kinds,
        "concept_rows": "concept" in kinds,
        "model": summary.get("model"),
        "metric": performance.get("metric"),
        **{
            k: performance.get(k)
            for k in ("estimate", "realized", "low", "high", "reference", "reference_low")
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    record["leaked"]["monitor"] = (
        leaked(batch, lineage_of(Path(summary["model"]))) if summary.get("model") else 0
    )
    record["quiet"] = record["event"] is None and not kinds
    if performance.get("batch_rows") not in (None, len(batch)):  # the tap saw another batch
        record["errors"].append(f"monitor: scored {performance['batch_rows']} rows, the tap saw {len(batch)}")


def run_retrain(season: Season, record: dict[str, Any]) -> tuple[Path | None, Path]:
    """The retrain deployment's flow; the decision, its reason and the rows it compared on."""
    champion = champion_dir(season.root)
    season.taps.reset()
    started = time.perf_counter()
    result = season.flows["retrain"]()
    seconds = time.perf_counter() - started
    same = result.get("same_rows") or {}
    record["retrain"] = {
        "outcome": result["outcome"],
        "version": result.get("version"),
        "reason": result["reason"],
        "stages_rerun": result.get("stages_rerun"),
        "compared_rows": same.get("rows"),
        "candidate": same.get("candidate"),
        "champion": same.get("champion"),
        "seconds": round(seconds, 1),
    }
    compared = season.taps.compared or []
    if same.get("rows") not in (None, len(compared)):  # a class-set change leaves rows out; not here
        record["errors"].append(f"retrain: compared {same['rows']} rows, the tap saw {len(compared)}")
    candidate = season.root / "models"
    record["leaked"]["compare"] = sum(leaked(compared, lineage_of(b)) for b in (champion, candidate) if b)
    return champion, candidate


def run_oracle(season: Season, record: dict[str, Any], champion: Path | None, candidate: Path) -> None:
    """Champion and candidate on this drop's oracle pool, and the oracle's verdict on the decision."""
    started = time.perf_counter()
    pool = season.source.oracle(record["drop"])
    seen = set(season.table[season.source.data["id"]].astype(str))
    overlap = int(pool[season.source.data["id"]].astype(str).isin(seen).sum())
    pool_path = season.root.parent / "oracle.parquet"
    write_parquet(pa.Table.from_pandas(pool, preserve_index=False), pool_path)
    outcome = record["retrain"]["outcome"]
    scores = {"candidate": season.oracle.score(candidate, pool_path, pool)}
    if champion is not None:
        scores["champion"] = season.oracle.score(champion, pool_path, pool)
    verdict = None
    if champion is not None and outcome in ("promoted", "kept"):
        verdict = oracle_verdict(
            outcome == "promoted", scores["candidate"], scores["champion"], season.tolerance
        )
    record["oracle"] = {
        **{k: round(v, 4) for k, v in scores.items()},
        "rows": len(pool),
        "rows_in_source": overlap,
        "verdict": verdict,
        "seconds": round(time.perf_counter() - started, 1),
    }
    record["leaked"]["oracle"] = overlap


def run_drop(season: Season, drop: int) -> dict[str, Any]:
    """One scheduled day: new rows (and the event), the monitor, the retrain, the oracle."""
    started = time.perf_counter()
    event, edit = season.events.get(drop), season.edits.get(drop)
    record: dict[str, Any] = {"drop": drop, "event": event, "edit": edit, "leaked": {}, "errors": []}
    if drop > 0:
        count = max(1, round(DROP_SHARE * len(season.table)))
        rows = season.source.drop(drop, count, event)
        if event in DATA_EVENTS:
            season.event_ids[event] = set(rows[season.source.data["id"]].astype(str))
        season.table = pd.concat([season.table, rows], ignore_index=True)
        write_source(season.root, season.table)
        record["rows_added"] = len(rows)
        if event == "split_seed":
            set_split_seed(season.root, season.source.data["split"]["seed"] + 1)
        try:
            run_monitor(season, record)
        except Exception as err:  # a failed run is a finding of the season, not its end
            record["errors"].append(f"monitor: {type(err).__name__}: {err}")
    record["rows_total"] = len(season.table)
    try:
        with mistaken_edit(season.root, edit):
            champion, candidate = run_retrain(season, record)
        run_oracle(season, record, champion, candidate)
    except Exception as err:
        record["errors"].append(f"retrain: {type(err).__name__}: {err}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def progress(record: dict[str, Any]) -> str:
    monitor, retrain, oracle = (
        record.get("monitor") or {},
        record.get("retrain") or {},
        record.get("oracle") or {},
    )
    flags = ",".join(sorted({f["column"] for f in monitor.get("flags", ())})) or "-"
    perf = "ALARM" if monitor.get("performance_alarm") else ""
    label = record["event"] or ("quiet" if record.get("quiet") else "-")
    label += f" (no {record['edit']})" if record.get("edit") else ""
    return (
        f"  drop {record['drop']:>2} {label:<13}"
        f" rows {record['rows_total']:>5}  flags {flags} {perf}"
        f"  est {_fmt(monitor.get('estimate'))} real {_fmt(monitor.get('realized'))}"
        f"  {retrain.get('outcome', 'error'):<8} oracle cand {_fmt(oracle.get('candidate'))}"
        f" champ {_fmt(oracle.get('champion'))}  {record['seconds']:.0f} s"
        + (f"  ERRORS {record['errors']}" if record["errors"] else "")
    )


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


# --- where the time goes -----------------------------------------------------------------------


def stage_seconds(since: float, cold_end: float) -> dict[str, dict[str, float]]:
    """Run time per flow name (Prefect's record of each stage), in the cold run and over the drops."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    start = datetime.fromtimestamp(since, UTC)
    cold = datetime.fromtimestamp(cold_end, UTC)
    totals: dict[str, dict[str, float]] = {}
    with get_client(sync_client=True) as client:
        names: dict[Any, str] = {}
        offset = 0
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=start)),
                sort=FlowRunSort.START_TIME_ASC,
                limit=200,
                offset=offset,
            )
            for run in runs:
                if run.start_time is None:
                    continue
                if run.flow_id not in names:
                    names[run.flow_id] = client.read_flow(run.flow_id).name
                part = "cold" if run.start_time < cold else "drops"
                entry = totals.setdefault(names[run.flow_id], {"cold": 0.0, "drops": 0.0})
                entry[part] += run.total_run_time.total_seconds()
            if len(runs) < 200:
                break
            offset += 200
    return {name: {k: round(v, 1) for k, v in parts.items()} for name, parts in sorted(totals.items())}


# --- the timeline -------------------------------------------------------------------------------


def timeline_figure(
    records: list[dict[str, Any]], events: dict[int, str], metric: str, edits: dict[int, str] | None = None
) -> Any:
    """Metric per drop (estimated, realized with its interval, oracle), events, drift flags, promotions."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11.0, 5.4))
    ax = figure.add_subplot()
    drops = [r["drop"] for r in records]
    monitor = [r.get("monitor") or {} for r in records]
    oracle = [r.get("oracle") or {} for r in records]

    def series(rows: list[dict[str, Any]], key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    estimate, realized = series(monitor, "estimate"), series(monitor, "realized")
    low, high = series(monitor, "low"), series(monitor, "high")
    ax.plot(drops, estimate, "s-", ms=3, color="tab:blue", label="estimated (CBPE)")
    has = ~np.isnan(realized)
    ax.errorbar(
        np.array(drops)[has], realized[has], yerr=[realized[has] - low[has], high[has] - realized[has]],
        fmt="o", color="black", ms=4, capsize=2, label="realized (95 % interval)",
    )  # fmt: skip
    ax.plot(drops, series(oracle, "champion"), ".:", color="tab:gray", label="champion (served) on oracle")
    ax.plot(drops, series(oracle, "candidate"), ".--", color="tab:green", label="candidate on oracle")
    shown = np.concatenate([estimate, realized, low, high, series(oracle, "candidate")])
    shown = shown[~np.isnan(shown)]
    top = float(shown.max()) if shown.size else 1.0
    bottom = float(shown.min()) if shown.size else 0.0
    span = max(top - bottom, 0.05)
    for drop, kind in events.items():
        ax.axvline(drop, color="tab:orange", alpha=0.6, lw=1)
        ax.text(drop + 0.1, bottom - 0.02 * span, kind, rotation=90, va="top", fontsize=7, color="tab:orange")
    for drop, role in (edits or {}).items():
        ax.axvline(drop, color="tab:brown", alpha=0.5, lw=1, ls="--")
        ax.text(drop + 0.1, bottom - 0.02 * span, f"edit: no {role}", rotation=90, va="top", fontsize=7,
                color="tab:brown")  # fmt: skip
    flagged = [r["drop"] for r in records if (r.get("monitor") or {}).get("flags")]
    alarms = [r["drop"] for r in records if (r.get("monitor") or {}).get("performance_alarm")]
    promoted = [r["drop"] for r in records if (r.get("retrain") or {}).get("outcome") == "promoted"]
    ax.plot(flagged, [top + 0.06 * span] * len(flagged), "v", color="tab:red", label="drift flagged")
    ax.plot(alarms, [top + 0.10 * span] * len(alarms), "x", color="tab:purple", label="performance alarm")
    ax.plot(promoted, [top + 0.02 * span] * len(promoted), "^", color="tab:green", ms=5, label="promoted")
    ax.set_ylim(bottom - 0.3 * span, top + 0.15 * span)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("drop")
    ax.set_ylabel(metric)
    ax.set_title("A season of scheduled monitoring and retraining")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, ncol=4, frameon=False)
    figure.tight_layout()
    return figure


def write_timeline(
    records: list[dict[str, Any]],
    events: dict[int, str],
    metric: str,
    path: Path,
    edits: dict[int, str] | None = None,
) -> Path:
    from tasks.evaluate.figures import to_png

    write_bytes(to_png(timeline_figure(records, events, metric, edits)), path)
    return path


# --- main -------------------------------------------------------------------------------------------


NOT_STAGES = ("fuseline-retrain", "fuseline-monitor", "train-members")  # the scheduled flows; a subflow


def season_summary(season: Season, cold: float, started: float, stages: dict[str, Any]) -> dict[str, Any]:
    records = season.records
    summary = summarise(records, season.events, season.tolerance, season.source.signals)
    drop_records = [r for r in records if r["drop"] > 0]
    retrains = [r["retrain"]["seconds"] for r in drop_records if r.get("retrain")]
    median = statistics.median(retrains) if retrains else None
    stage_flows = {k: v for k, v in stages.items() if isinstance(v, dict) and k not in NOT_STAGES}
    in_stages = sum(v["drops"] for v in stage_flows.values())
    outside = (sum(retrains) - in_stages) / len(retrains) if retrains and stage_flows else None
    summary |= {
        "dataset": season.source.name,
        "drops": len(drop_records),
        "rows_initial": records[0]["rows_total"],
        "rows_final": records[-1]["rows_total"],
        "cold_seconds": round(cold, 1),
        "drop_retrain_seconds_median": median,
        "incremental_cost_ratio": round(median / cold, 3) if median and cold else None,
        "seconds_per_drop": _mean(r["seconds"] for r in drop_records),
        "seconds_total": round(time.perf_counter() - started, 1),
        "stage_seconds": stages,
        # a drop's retrain time outside the stage flows' own run time: process start-up, imports, DVC
        "retrain_outside_stages_per_drop": round(outside, 1) if outside is not None else None,
    }
    summary["edits"] = [
        {
            "drop": r["drop"],
            "role": r["edit"],
            "outcome": (r.get("retrain") or {}).get("outcome"),
            "oracle_gain": round(((r.get("oracle") or {}).get("verdict") or {}).get("gain", math.nan), 4),
        }
        for r in records
        if r.get("edit")
    ]
    summary["done"] = done(summary)
    return summary


def play(season: Season, drops: int, workdir: Path, started: float) -> dict[str, Any]:
    """Drop 0 (the cold run), then each drop (lifecycle.json after every one); the summary and timeline."""
    from tasks.config import load_params

    season.taps, season.flows = process_taps(), scheduled_flows()
    season.tolerance = load_params("params.yaml").schedule.tolerance
    season_start = time.time()
    cold = cold_end = 0.0
    for drop in range(drops + 1):
        record = run_drop(season, drop)
        season.records.append(record)
        if drop == 0:
            if record["errors"]:
                raise SystemExit(f"lifecycle: the cold run failed: {record['errors']}")
            cold, cold_end = record["retrain"]["seconds"], time.time()
        print(progress(record), file=sys.stderr, flush=True)
        write_json(
            {"events": season.events, "edits": season.edits, "records": season.records},
            workdir / "lifecycle.json",
        )
    try:
        stages = stage_seconds(season_start, cold_end)
    except Exception as err:  # the breakdown is a help, not a result
        stages = {"error": f"{type(err).__name__}: {err}"[:300]}
    summary = season_summary(season, cold, started, stages)
    metric = next(
        (r["monitor"]["metric"] for r in season.records if (r.get("monitor") or {}).get("metric")), ""
    )
    timeline = write_timeline(
        season.records, season.events, metric or "metric", workdir / "timeline.png", season.edits
    )
    summary |= {"timeline": str(timeline), "records": str(workdir / "lifecycle.json")}
    write_json(
        {"summary": summary, "events": season.events, "edits": season.edits, "records": season.records},
        workdir / "lifecycle.json",
    )
    return summary


@dataclass(frozen=True)
class SeasonSpec:
    """What one season is played on: its rows, encoders and schedule."""

    drops: int
    rows: int | None
    oracle_rows: int
    dataset: str | None
    events: dict[int, str]
    edits: dict[int, str]
    text_model: str
    images: bool


def play_season(spec: SeasonSpec, workdir: Path, keep: bool) -> dict[str, Any]:
    """A fresh project and Prefect server under `workdir`, the season on them, its summary."""
    started = time.perf_counter()
    workdir = workdir.resolve()
    images = workdir / "images" if spec.images else None
    if images is not None:
        shutil.rmtree(images, ignore_errors=True)
    source = (
        shared_source(spec.dataset, spec.rows, spec.drops, spec.events)
        if spec.dataset
        else demo_source(spec.rows or 1500, spec.oracle_rows, images=images)
    )
    root = workdir / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    from flows.server import start_server, stop_server

    state = workdir / "prefect"
    start_server(port=PORT, state_dir=state)
    try:
        table = source.initial()
        new_project(root, source, table, spec.text_model)
        os.chdir(root)
        oracle = Oracle(workdir / "oracle-cache", source.data["target"])
        season = Season(root, source, spec.events, table, oracle, edits=spec.edits)
        summary = play(season, spec.drops, workdir, started)
        summary["text_model"] = spec.text_model
        summary["images"] = spec.images
    finally:
        os.chdir(REPO)
        stop_server(state_dir=state)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return summary


def cost_probe_spec(rows: int) -> SeasonSpec:
    """Where the row cache is what a drop saves: pretrained text and image encoders, many rows.

    The season's own project encodes text with tfidf, which a refit re-encodes in a second or
    two, so its drops cost what its cold run costs (process start-up, DVC, training). The probe
    is the demo's modalities on the shipped encoders (all-MiniLM-L6-v2, EfficientNet-Lite0), a
    cold run and two drops of 5 %, no events.
    """
    return SeasonSpec(
        drops=COST_PROBE_DROPS, rows=rows, oracle_rows=COST_PROBE_ORACLE_ROWS, dataset=None,
        events={}, edits={}, text_model="minilm", images=True,
    )  # fmt: skip


PROBE_KEYS = (
    "rows_initial", "rows_final", "drops", "cold_seconds", "drop_retrain_seconds_median",
    "incremental_cost_ratio", "retrain_outside_stages_per_drop", "stage_seconds", "seconds_total",
    "text_model", "images", "errors",
)  # fmt: skip


def with_cost_probe(summary: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    """The season's summary, its cost criterion measured by the probe (the season's own kept beside)."""
    merged = dict(summary)
    merged["season_cost_ratio"] = summary.get("incremental_cost_ratio")
    merged["cost_probe"] = {key: probe.get(key) for key in PROBE_KEYS}
    merged["incremental_cost_ratio"] = probe.get("incremental_cost_ratio")
    merged["done"] = done(merged)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drops", type=int, default=24)
    parser.add_argument("--rows", type=int, help="initial rows (demo: 1500; a dataset: half its stream)")
    parser.add_argument("--oracle-rows", type=int, default=ORACLE_ROWS)
    parser.add_argument("--dataset", help="a season on ../shared/data/NAME (petfinder)")
    parser.add_argument("--events", help="DROP:KIND,... instead of the default schedule")
    parser.add_argument("--edits", help="DROP:ROLE,... mistaken params edits (default 21:numeric,23:text)")
    parser.add_argument(
        "--text-model", default="tfidf", help="encoders.text.model (minilm: the row cache pays)"
    )
    parser.add_argument(
        "--images",
        action="store_true",
        help="demo rows with their photos (the shipped image encoder): where the row cache pays most",
    )
    parser.add_argument(
        "--cost-probe-rows",
        type=int,
        default=COST_PROBE_ROWS,
        help=f"rows of the cost probe played after the season (default {COST_PROBE_ROWS}; 0: none)",
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench" / "lifecycle")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line, last")
    parser.add_argument("--keep", action="store_true", help="keep the project (default: delete it)")
    args = parser.parse_args()
    events = event_schedule(args.drops, args.events)
    spec = SeasonSpec(
        drops=args.drops, rows=args.rows, oracle_rows=args.oracle_rows, dataset=args.dataset,
        events=events, edits=edit_schedule(args.drops, events, args.edits), text_model=args.text_model,
        images=args.images,
    )  # fmt: skip
    started = time.perf_counter()
    os.environ.pop("PYTHONPATH", None)  # stages import the project's own copy of the code
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    from flows._runtime import local_api_url

    os.environ["PREFECT_API_URL"] = local_api_url(PORT)  # before Prefect reads its settings
    summary = play_season(spec, args.workdir, args.keep)
    if args.cost_probe_rows > 0:
        print(f"cost probe: {args.cost_probe_rows} rows, minilm + images", file=sys.stderr, flush=True)
        probe = play_season(cost_probe_spec(args.cost_probe_rows), args.workdir / "cost-probe", args.keep)
        summary = with_cost_probe(summary, probe)
        summary["seconds_total"] = round(time.perf_counter() - started, 1)
        records = Path(summary["records"])
        write_json({**json.loads(records.read_text()), "summary": summary}, records)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
