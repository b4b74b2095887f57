"""The real train flow fits the boosted member, offers it to the ensemble and stores it verifiably."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.train.boosted import MODEL, BoostedModel
from tasks.train.members import ENSEMBLE, load_final_model, load_member, write_ensemble
from tasks.train.plan import BOOSTED
from tests.tasks.evaluate.test_flow import _write_inputs

pytestmark = pytest.mark.slow


def test_the_train_flow_offers_it_to_the_ensemble_and_stores_it_for_serving(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.train import train

    monkeypatch.chdir(tmp_path)
    _write_inputs(tmp_path)
    train(params_path="params.yaml")
    models = tmp_path / "models"
    ensemble = json.loads((models / ENSEMBLE).read_text())
    entry = next(t for t in ensemble["tried"] if t["name"] == BOOSTED)
    assert entry["status"] == "trained" and entry["best_round"] >= 1 and entry["val"] > 0.9
    assert BOOSTED in ensemble["member_val"] and ensemble["kinds"][BOOSTED] == BOOSTED  # a candidate
    # as evaluate loads a member the selection left out, by the kind train recorded
    assert isinstance(load_member(models, BOOSTED, ensemble["kinds"][BOOSTED]), BoostedModel)
    # chosen, its files are digested with the ensemble and `fuseline predict` serves it
    (models / ENSEMBLE).unlink()
    chosen = {"members": {BOOSTED: 1.0}, "kinds": ensemble["kinds"]}
    write_ensemble(models, chosen, ensemble["tried"])
    assert f"members/{BOOSTED}/{MODEL}" in json.loads((models / ENSEMBLE).read_text())["files"]
    assert isinstance(load_final_model(models).members[BOOSTED], BoostedModel)
