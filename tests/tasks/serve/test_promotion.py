"""Model promotion: the decision rule, and the registry it writes (real files, no mocks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.errors import BundleError
from tasks.serve.promotion import (
    CURRENT,
    HISTORY,
    MODEL,
    current_entry,
    decide,
    promote,
    record,
    resolve_model_dir,
    tree_digest,
)


def _models(root: Path, weights: bytes = b"weights-1") -> Path:
    """A stand-in models/ tree: promotion copies bytes and never loads them."""
    (root / "baselines" / "text").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "bundle.json").write_text("{}")
    (root / "baselines" / "text" / "model.safetensors").write_bytes(b"baseline")
    return root


def test_slightly_worse_score_within_tolerance_is_promoted() -> None:
    assert decide("auc", candidate=0.860, current=0.862, tolerance=0.005).promote


def test_score_worse_by_more_than_tolerance_is_kept_out() -> None:
    decision = decide("auc", candidate=0.850, current=0.862, tolerance=0.005)
    assert not decision.promote
    assert "keeping the current model" in decision.reason


def test_a_gap_the_paired_interval_calls_chance_does_not_keep_the_champion() -> None:
    """Worse by more than the tolerance on the shared rows, but the interval holds zero: promote.

    The same test rows judge every retrain, so the champion that was lucky on them would
    otherwise beat every fresh candidate (bench/lifecycle.py measured it).
    """
    decision = decide("auc", 0.776, 0.7955, 0.005, interval={"low": -0.045, "high": 0.006})
    assert decision.promote
    assert "includes zero" in decision.reason


def test_a_significantly_worse_candidate_is_kept_out() -> None:
    decision = decide("auc", 0.72, 0.76, 0.005, interval={"low": -0.061, "high": -0.018})
    assert not decision.promote
    assert "worse side of zero" in decision.reason


def test_the_interval_reads_in_the_metric_s_direction() -> None:
    # rmse: candidate minus current above zero is worse
    assert not decide("rmse", 1.2, 1.0, 0.1, interval={"low": 0.05, "high": 0.35}).promote
    assert decide("rmse", 1.2, 1.0, 0.1, interval={"low": -0.02, "high": 0.35}).promote
    # within tolerance: promoted whatever the interval says
    assert decide("auc", 0.860, 0.862, 0.005, interval={"low": -0.004, "high": -0.001}).promote


def test_error_metric_direction_is_respected() -> None:
    # rmse: lower is better, so a higher candidate is the worse one
    assert not decide("rmse", candidate=1.20, current=1.00, tolerance=0.1).promote
    assert decide("rmse", candidate=0.80, current=1.00, tolerance=0.0).promote


def test_undefined_candidate_metric_is_never_promoted() -> None:
    assert not decide("auc", candidate=math.nan, current=0.7, tolerance=1.0).promote


def test_first_model_is_promoted() -> None:
    assert decide("accuracy", candidate=0.1, current=None, tolerance=0.0).promote


def test_promote_copies_the_bundle_and_moves_the_pointer(tmp_path: Path) -> None:
    models = _models(tmp_path / "models")
    registry = tmp_path / "registry"
    decision = decide("auc", 0.8, None, 0.0)
    first = promote(registry, models, {"test": {"auc": 0.8}}, decision)
    second = promote(registry, models, {"test": {"auc": 0.8}}, decision)
    assert (first, second) == ("v0001", "v0002")
    assert current_entry(registry)["version"] == "v0002"
    copied = registry / "v0001" / MODEL / "baselines" / "text" / "model.safetensors"
    assert copied.read_bytes() == b"baseline"
    assert current_entry(registry)["models_digest"] == tree_digest(models)


def test_registry_resolves_to_its_current_bundle(tmp_path: Path) -> None:
    models = _models(tmp_path / "models")
    registry = tmp_path / "registry"
    promote(registry, models, {}, decide("auc", 0.8, None, 0.0))
    assert resolve_model_dir(registry) == registry / "v0001" / MODEL
    assert resolve_model_dir(models) == models  # a plain bundle directory is itself


def test_pointer_to_a_missing_version_is_a_bundle_error(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / CURRENT).write_text(json.dumps({"version": "v0007", "metric": "auc", "value": 0.9}))
    with pytest.raises(BundleError, match="v0007"):
        resolve_model_dir(registry)


def test_every_decision_is_recorded_in_order(tmp_path: Path) -> None:
    record(tmp_path, decide("auc", 0.8, None, 0.0), "v0001")
    record(tmp_path, decide("auc", 0.5, 0.8, 0.0), None)
    history = json.loads((tmp_path / HISTORY).read_text())
    assert [(h["promote"], h["version"]) for h in history] == [(True, "v0001"), (False, None)]


def test_tree_digest_changes_when_any_file_changes(tmp_path: Path) -> None:
    a = tree_digest(_models(tmp_path / "a", b"weights-1"))
    b = tree_digest(_models(tmp_path / "b", b"weights-2"))
    assert a != b
    assert a == tree_digest(tmp_path / "a")
