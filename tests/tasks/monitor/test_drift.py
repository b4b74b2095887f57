"""Drift statistics on synthetic samples: a planted shift is flagged, a fresh sample is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DriftThresholds, MonitorConfig, params_from_dict
from tasks.errors import ConfigError
from tasks.monitor.checks import holm, judge
from tasks.monitor.domain import domain_classifier_drift
from tasks.monitor.predictions import prediction_checks
from tasks.monitor.report import DriftReport, write_report
from tasks.monitor.statistics import (
    Comparison,
    categorical_drift,
    missing_drift,
    numeric_drift,
    psi,
    unseen_drift,
)
from tests.conftest import tiny_params

THRESHOLDS = DriftThresholds()


def _flagged(comparison: object) -> bool:
    return judge("x", "numeric", "distribution", comparison, THRESHOLDS).drifted  # type: ignore[arg-type]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    same = psi(np.array([10, 20, 30]), np.array([20, 40, 60]))
    small = psi(np.array([10, 20, 30]), np.array([12, 20, 28]))
    large = psi(np.array([10, 20, 30]), np.array([30, 20, 10]))
    assert same == pytest.approx(0.0) and 0 < small < 0.1 < THRESHOLDS.psi < large


def test_numeric_shift_is_flagged() -> None:
    reference, batch = _rng(0).lognormal(3.5, 0.5, 300), _rng(1).lognormal(3.5, 0.5, 200) * 1.8
    comparison = numeric_drift(reference, batch)
    assert comparison.test == "ks" and comparison.score > 0.5 and _flagged(comparison)


def test_numeric_fresh_sample_is_not_flagged() -> None:
    comparison = numeric_drift(_rng(0).lognormal(3.5, 0.5, 300), _rng(1).lognormal(3.5, 0.5, 200))
    assert not _flagged(comparison)


def test_numeric_missing_values_are_left_to_the_missing_check() -> None:
    reference = _rng(0).normal(size=300)
    batch = np.r_[_rng(1).normal(size=200), np.full(100, np.nan)]
    assert numeric_drift(reference, batch).batch_rows == 200


def test_a_tiny_shift_in_a_huge_batch_is_significant_but_not_drift() -> None:
    """Why a check needs both p < alpha and an effect over its threshold."""
    comparison = numeric_drift(_rng(0).normal(size=50_000), _rng(1).normal(0.05, 1, 50_000))
    assert comparison.p_value < THRESHOLDS.alpha and comparison.score < THRESHOLDS.psi
    assert not _flagged(comparison)


def test_removed_category_is_flagged() -> None:
    categories = ["kitchen", "office", "garden", "bathroom", "nursery"]
    reference = list(_rng(0).choice(categories, 300))
    batch = [c for c in _rng(1).choice(categories, 250) if c != "kitchen"]
    comparison = categorical_drift(reference, batch)
    assert comparison.test == "chi2" and "kitchen" in comparison.detail and _flagged(comparison)


def test_long_tailed_categories_of_a_fresh_sample_are_not_flagged() -> None:
    """Brands: hundreds of values, most seen once; rare ones share the "<other>" bin."""
    brands = [f"brand-{i}" for i in range(1000)]
    weights = 1 / np.arange(1, 1001)
    weights /= weights.sum()
    reference, batch = (
        list(_rng(0).choice(brands, 400, p=weights)),
        list(_rng(1).choice(brands, 300, p=weights)),
    )
    assert not _flagged(categorical_drift(reference, batch))
    assert not _flagged(unseen_drift(reference, batch))


def test_new_categories_beyond_the_expected_long_tail_are_flagged() -> None:
    reference = list(_rng(0).choice(["a", "b", "c"], 300))
    batch = list(_rng(1).choice(["a", "b", "c"], 180)) + ["d"] * 20
    comparison = unseen_drift(reference, batch)
    assert comparison.statistic == 20 and comparison.score > THRESHOLDS.unseen and _flagged(comparison)


def test_rising_missing_share_is_flagged_and_a_steady_one_is_not() -> None:
    reference = _rng(0).random(400) > 0.05  # present with probability 0.95
    assert _flagged(missing_drift(reference, _rng(1).random(200) > 0.30))
    assert not _flagged(missing_drift(reference, _rng(2).random(200) > 0.05))


def test_too_few_values_are_reported_but_never_flagged() -> None:
    comparison = numeric_drift(np.arange(100.0), np.array([1e6, 2e6]))
    assert comparison.p_value == 1.0 and not _flagged(comparison)


def test_domain_classifier_tells_shifted_embeddings_apart() -> None:
    reference = _rng(0).normal(size=(150, 64))
    batch = _rng(1).normal(size=(120, 64)) + np.r_[np.full(4, 0.6), np.zeros(60)]  # a shift in 4 of 64 dims
    comparison = domain_classifier_drift(reference, batch)
    assert comparison.score > 0.7 and comparison.p_value < 0.01 and _flagged(comparison)


def test_domain_classifier_sees_no_drift_in_a_fresh_sample() -> None:
    comparison = domain_classifier_drift(_rng(0).normal(size=(150, 64)), _rng(1).normal(size=(120, 64)))
    assert comparison.p_value > 0.01 and not _flagged(comparison)


def test_domain_classifier_p_value_holds_its_level_on_same_distribution_samples() -> None:
    """The permutation-calibrated p-value holds its level: about 10 % of null draws fall under 0.1."""
    draws = [(_rng(2 * i).normal(size=(40, 16)), _rng(2 * i + 1).normal(size=(30, 16))) for i in range(60)]
    p_values = np.array([domain_classifier_drift(a, b, seed).p_value for seed, (a, b) in enumerate(draws)])
    assert np.mean(p_values < 0.1) <= 0.2


def _steady_checks(count: int) -> list:
    """Missing-share checks that see no change at all (p = 1)."""
    same = missing_drift(np.ones(99, bool), np.ones(99, bool))
    return [judge(f"c{i}", "numeric", "missing", same, THRESHOLDS) for i in range(count)]


def test_holm_keeps_one_small_p_value_among_many_checks_from_raising_an_alarm() -> None:
    """The demo's own fluke (fresh sample, 1 of 18 checks at p = 0.0015) is no drift for the run."""
    fluke = Comparison("chi2", 15.5, 0.0015, "psi", 0.341, "kitchen 32.6% -> 12.9%", 136, 120)
    alone = judge("category", "categorical", "distribution", fluke, THRESHOLDS)
    steady = _steady_checks(17)
    assert alone.drifted and not any(c.drifted for c in holm([alone, *steady], THRESHOLDS))


def test_holm_still_flags_a_real_shift_among_many_checks() -> None:
    tripled = numeric_drift(_rng(0).lognormal(3.5, 0.5, 136), _rng(1).lognormal(3.5, 0.5, 120) * 3)
    shift = judge("price", "numeric", "distribution", tripled, THRESHOLDS)
    steady = _steady_checks(17)
    checks = holm([*steady, shift], THRESHOLDS)
    assert [c.column for c in checks if c.drifted] == ["price"] and checks[-1].p_adjusted == pytest.approx(
        min(1.0, 18 * shift.p_value)
    )


def test_prediction_drift_sees_a_flipped_class_balance_and_scores() -> None:
    reference, batch = _rng(0).beta(2, 2, 300), _rng(1).beta(5, 1.5, 200)
    checks = prediction_checks("binary", ["0", "1"], reference, batch, THRESHOLDS)
    assert [(c.aspect, c.drifted) for c in checks] == [("predicted class", True), ("score", True)]


def test_prediction_drift_of_a_fresh_sample_is_none() -> None:
    reference, batch = _rng(0).dirichlet([2, 2, 2], 300), _rng(1).dirichlet([2, 2, 2], 200)
    checks = prediction_checks("multiclass", ["a", "b", "c"], reference, batch, THRESHOLDS)
    assert len(checks) == 2 and not any(c.drifted for c in checks)


def test_report_files_say_which_columns_drifted(tmp_path: Path) -> None:
    drifted = judge(
        "price", "numeric", "distribution", numeric_drift(np.arange(100.0), np.arange(100.0) * 3), THRESHOLDS
    )
    steady = judge(
        "price", "numeric", "missing", missing_drift(np.ones(100, bool), np.ones(80, bool)), THRESHOLDS
    )
    report = DriftReport([drifted, steady], "100 train rows", "80 rows of new.csv", None, THRESHOLDS)
    files = write_report(report, tmp_path / "monitor")
    saved = json.loads(Path(files["drift.json"]).read_text())
    assert saved["drifted_columns"] == ["price"] and saved["checks"][0]["drifted"] is True
    assert "Drift in 1 column(s): price" in Path(files["drift.md"]).read_text()
    assert Path(files["drift.png"]).read_bytes().startswith(b"\x89PNG")


def test_monitor_section_defaults_and_a_bad_cron_names_its_key() -> None:
    params = tiny_params()
    params.pop("monitor", None)
    assert params_from_dict(params).monitor == MonitorConfig()
    with pytest.raises(ConfigError, match="monitor.cron: expected a 5-field cron expression"):
        params_from_dict(tiny_params(monitor={"cron": "daily"}))
