"""bench/lifecycle.py's pure parts: the event schedule, the drop rows, the oracle's scoring, the summary.

The season itself (dvc repro and the flows over 24 drops) is the benchmark, not a test.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from tests.bench_module import load_bench

SIGNALS = {"covariate": {"price"}, "empty_column": {"description"}, "new_category": {"category"}}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("lifecycle")


def test_default_events_keep_those_that_fit_and_a_spec_places_them(bench: ModuleType) -> None:
    assert bench.event_schedule(24) == bench.DEFAULT_EVENTS
    assert bench.event_schedule(11) == {4: "covariate", 7: "text_mix", 10: "concept"}
    assert bench.event_schedule(3, "1:concept, 3:split_seed") == {1: "concept", 3: "split_seed"}
    with pytest.raises(SystemExit, match="DROP:KIND"):
        bench.event_schedule(3, "4:concept")


def test_mistaken_edits_keep_those_that_fit_and_never_share_a_drop_with_an_event(bench: ModuleType) -> None:
    events = bench.event_schedule(24)
    assert bench.edit_schedule(24, events) == {21: "numeric", 23: "text"}
    assert bench.edit_schedule(22, events) == {21: "numeric"}
    assert bench.edit_schedule(5, {}, "2:text") == {2: "text"}
    with pytest.raises(SystemExit, match="DROP:ROLE"):
        bench.edit_schedule(5, {}, "2:label")
    with pytest.raises(SystemExit, match="already have an event"):
        bench.edit_schedule(24, events, "4:text")


def test_a_mistaken_edit_empties_one_role_while_it_lasts_and_restores_the_file(
    bench: ModuleType, tmp_path: Path
) -> None:
    import yaml

    text = "# the operator's comments stay\ndata:\n  columns: {numeric: [price], text: [title]}\n"
    (tmp_path / "params.yaml").write_text(text)
    with bench.mistaken_edit(tmp_path, "numeric"):
        edited = yaml.safe_load((tmp_path / "params.yaml").read_text())
        assert edited["data"]["columns"] == {"numeric": [], "text": ["title"]}
    assert (tmp_path / "params.yaml").read_text() == text
    with pytest.raises(RuntimeError), bench.mistaken_edit(tmp_path, "text"):
        raise RuntimeError("a failed retrain")
    assert (tmp_path / "params.yaml").read_text() == text


def test_the_oracle_counts_only_clear_calls_and_flags_a_worse_promotion(bench: ModuleType) -> None:
    close = bench.oracle_verdict(True, 0.801, 0.800, tolerance=0.005)
    assert not close["counted"] and not close["agree"] and not close["worse_promoted"]
    assert bench.oracle_verdict(True, 0.82, 0.80, 0.005)["agree"]
    assert not bench.oracle_verdict(False, 0.82, 0.80, 0.005)["agree"]
    worse = bench.oracle_verdict(True, 0.793, 0.800, 0.005)  # worse by 0.007: not counted, still flagged
    assert not worse["counted"] and worse["worse_promoted"]
    rmse = bench.oracle_verdict(True, 1.10, 1.00, 0.005, higher_is_better=False)
    assert rmse["counted"] and not rmse["agree"] and rmse["worse_promoted"]


def test_leaked_rows_are_train_and_val_rows_of_the_lineage(bench: ModuleType) -> None:
    lineage = pd.DataFrame({"row_id": ["a", "b", "c", "d"], "split": ["train", "val", "test", "train"]})
    assert bench.leaked(["a", "b", "c", "z"], lineage) == 2


def test_a_performance_alarm_is_the_monitors_own_performance_check(bench: ModuleType) -> None:
    assert bench.performance_alarm(
        [{"column": "performance", "role": "prediction", "aspect": "realized metric"}]
    )
    assert not bench.performance_alarm([{"column": "price", "role": "numeric", "aspect": "distribution"}])


def _record(bench, drop, event, flags=(), alarm=False, kinds=(), outcome="promoted", oracle=(0.75, 0.751)):
    """One drop's record as run_drop writes it (the fields summarise reads)."""
    champion, candidate = oracle
    return {
        "drop": drop,
        "event": event,
        "quiet": event is None and not kinds,
        "monitor": {
            "flags": [{"column": c, "role": r, "aspect": "distribution"} for c, r in flags],
            "performance_alarm": alarm,
            "estimate": 0.75,
            "realized": 0.70 if "concept" in kinds else 0.74,
            "low": 0.65,
            "high": 0.83,
            "concept_rows": "concept" in kinds,
        },
        "retrain": {"outcome": outcome, "reason": "on the same 100 test rows: ..."},
        "oracle": {
            "champion": champion,
            "candidate": candidate,
            "verdict": bench.oracle_verdict(outcome == "promoted", candidate, champion, 0.005),
        },
        "leaked": {"monitor": 0, "compare": 0},
    }


def test_the_summary_counts_detections_false_alarms_and_decisions(bench: ModuleType) -> None:
    records = [
        _record(bench, 1, None),
        _record(bench, 2, "covariate", outcome="kept"),  # missed at its drop ...
        _record(
            bench, 3, None, flags=[("price", "numeric")], kinds=("covariate",)
        ),  # ... caught next: not quiet
        _record(bench, 4, "concept", alarm=True, kinds=("concept",), oracle=(0.75, 0.73)),  # promoted, worse
        _record(bench, 5, None, flags=[("title", "text")]),  # a false alarm on a quiet run
        _record(bench, 6, "new_category", flags=[("price", "numeric")], oracle=(0.75, 0.78)),
    ]
    records[0]["leaked"]["compare"] = 3
    summary = bench.summarise(records, {2: "covariate", 4: "concept", 6: "new_category"}, 0.005, SIGNALS)
    assert (summary["events_total"], summary["events_detected"]) == (
        3,
        2,
    )  # price is not new_category's signal
    assert (summary["quiet_runs"], summary["false_alarms"], summary["false_alarm_drops"]) == (2, 1, [5])
    assert (summary["promotions_total"], summary["promotions_agree"], summary["worse_promoted"]) == (2, 1, 1)
    assert summary["leaked_rows"] == 3
    assert summary["estimate_abs_error"] == pytest.approx(0.01)  # the concept run (0.05 off) is left out
    assert bench.done(summary | {"incremental_cost_ratio": 0.2})["incremental_cost"]
    assert not bench.done(summary | {"incremental_cost_ratio": None})["events_detected"]


def test_demo_events_move_the_rows_as_documented(bench: ModuleType) -> None:
    base = bench.demo_rows(2000, 11, "base")
    shifted = bench.demo_rows(2000, 11, "shift", "covariate")
    concept = bench.demo_rows(2000, 11, "concept", "concept")
    category = bench.demo_rows(2000, 11, "category", "new_category")
    assert base["item_id"].iloc[0] == "base-000000" and base["label"].mean() == pytest.approx(0.5, abs=0.03)
    ratio = np.nanmedian(shifted["price"]) / np.nanmedian(base["price"])
    assert ratio == pytest.approx(np.exp(bench.PRICE_SHIFT * 0.55), rel=0.01)  # the same draws, moved

    def price_relation(rows: pd.DataFrame) -> float:
        known = rows["price"].notna()
        return float(np.corrcoef(np.log(rows.loc[known, "price"]), rows.loc[known, "label"])[0, 1])

    assert price_relation(base) > 0.1 and price_relation(concept) < -0.1
    assert (category["category"] == bench.NEW_CATEGORY).mean() == pytest.approx(0.3 * 0.95, abs=0.03)
    assert bench.demo_rows(50, 11, "empty", "empty_column")["description"].isna().all()
    budget = bench.demo_rows(50, 11, "mix", "text_mix")["title"].str.lower()
    assert len(budget) == 50 and budget.str.contains("plastic|cardboard").all()


def test_the_timeline_is_a_png(bench: ModuleType, tmp_path: Path) -> None:
    records = [_record(bench, 1, None), _record(bench, 2, "covariate", flags=[("price", "numeric")])]
    path = bench.write_timeline(records, {2: "covariate"}, "auc", tmp_path / "timeline.png", {1: "text"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cost_probe_decides_the_cost_criterion_and_the_season_ratio_stays_beside(
    bench: ModuleType,
) -> None:
    records = [_record(bench, 1, None), _record(bench, 2, "covariate")]
    season = bench.summarise(records, {2: "covariate"}, 0.005, SIGNALS) | {"incremental_cost_ratio": 1.05}
    probe = {"incremental_cost_ratio": 0.21, "cold_seconds": 300.0, "rows_initial": 16000, "images": True}
    merged = bench.with_cost_probe(season | {"done": bench.done(season)}, probe)
    assert (merged["season_cost_ratio"], merged["incremental_cost_ratio"]) == (1.05, 0.21)
    assert merged["cost_probe"]["rows_initial"] == 16000 and merged["cost_probe"]["images"]
    assert merged["done"]["incremental_cost"] and not bench.done(season)["incremental_cost"]
    costly = bench.with_cost_probe(season, probe | {"incremental_cost_ratio": 0.3})
    assert not costly["done"]["incremental_cost"]
    spec = bench.cost_probe_spec(16000)
    assert (spec.text_model, spec.images, spec.events, spec.edits) == ("minilm", True, {}, {})
