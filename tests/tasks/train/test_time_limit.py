"""`train.time_limit` is a limit: the fine-tuned member's lower pass under a deadline, and the
real train flow on a tiny dataset whose members would run far past the limit by themselves.

The flow's own start-up (a Prefect flow run and two subflow runs, reading params, features and
the aligned table, the linear baseline, one epoch of the fused head, choosing the ensemble and
writing models/) is measured as the wall time of the same run with a limit of 1 ms, where every
optional member is skipped; a run with limit T must then return within 1.05 T plus that.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from modelzoo.encoders.huggingface import HuggingFaceTextEncoder
from modelzoo.encoders.loading import load_text_encoder
from tasks.modalities.text import TextEncoderConfig, TextFinetuneConfig
from tasks.paths import Layout
from tasks.train.finetuned_member import PROBE_BATCHES, OverBudget
from tests.tasks.evaluate.test_flow import _params, _write_inputs
from tests.tasks.train.test_finetune import distinct_texts, entries, fine_tune, synthetic

ESTIMATED = re.compile(r"^skipped \(estimated \d+ s > \d+ s left\)$")
# the lower pass in batches of 8 texts: enough batches for the probe to be a small part of it
SMALL_BATCHES = TextEncoderConfig(
    max_length=32, batch_size=8, finetune=TextFinetuneConfig(layers=2, lr=2e-4, epochs=1, batch_size=16)
)


# --- the lower pass of a fine-tuned member --------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> HuggingFaceTextEncoder:
    encoder = load_text_encoder("minilm")
    assert isinstance(encoder, HuggingFaceTextEncoder)
    return encoder


def test_a_fine_tuned_member_that_cannot_fit_stops_after_its_probe(minilm, tmp_path: Path) -> None:
    """With the time already up, a few batches are timed and the rest of the pass never runs."""
    features, rows = synthetic("multiclass")
    with pytest.raises(OverBudget, match=r"^estimated \d+ s > 0 s left$") as raised:
        fine_tune(minilm, features, rows, "multiclass", tmp_path, text=SMALL_BATCHES, deadline=time.time())
    assert raised.value.estimated > 0
    # the first, middle and last batch (the last holds what is left over), not the 15 of the pass
    assert 0 < len(entries(tmp_path)) <= PROBE_BATCHES * SMALL_BATCHES.batch_size < len(distinct_texts(rows))


def test_a_fine_tuned_member_that_fits_trains_exactly_as_without_a_limit(minilm, tmp_path: Path) -> None:
    """The pass cut into probe and chunks runs the same batches: the same cache, the same model."""
    features, rows = synthetic("multiclass")
    free = fine_tune(minilm, features, rows, "multiclass", tmp_path / "free", text=SMALL_BATCHES)
    limited = fine_tune(minilm, features, rows, "multiclass", tmp_path / "limited", text=SMALL_BATCHES,
                        deadline=time.time() + 3600)  # fmt: skip
    assert limited.computed == free.computed == len(distinct_texts(rows))
    assert [e.relative_to(tmp_path / "limited") for e in entries(tmp_path / "limited")] == [
        e.relative_to(tmp_path / "free") for e in entries(tmp_path / "free")
    ]
    for a, b in zip(entries(tmp_path / "free"), entries(tmp_path / "limited"), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert limited.history == free.history
    for name, value in free.top.state_dict().items():
        assert torch.equal(value, limited.top.state_dict()[name]), name


# --- the train flow -------------------------------------------------------------------------------

LIMIT = 5.0  # seconds: its last 10 % (the tail share and the 5 %) is above this busy machine's noise
WORDS = ("river", "stone", "lamp", "garden", "window", "paper", "cloud", "engine", "violet", "harbour",
         "copper", "meadow", "signal", "pocket", "winter", "ladder")  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluate flow test's planted data, each row's note a distinct text of 60 words: a
    fine-tuned text member's lower pass then costs seconds a text on this CPU, not one pass of
    three texts."""
    root = tmp_path_factory.mktemp("time-limit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        _write_inputs(root)
    aligned_path = Layout(root).aligned
    aligned = pd.read_parquet(aligned_path)
    rng = np.random.default_rng(0)
    notes = [f"note {i}: " + " ".join(rng.choice(WORDS, 60)) for i in range(len(aligned))]
    aligned["note"] = pd.Series(notes, dtype="string")
    aligned.to_parquet(aligned_path, index=False)
    return root


@pytest.fixture(scope="module")
def warm(prefect_api: str, workdir: Path) -> Path:
    """One run first: the first flow run of a process pays Prefect's and torch's one-off set-up,
    which would otherwise inflate whichever measurement came first."""
    with pytest.MonkeyPatch.context() as patch:
        _train(workdir, patch, train={"preset": "best", "time_limit": 0.001})
    return workdir


def _train(workdir: Path, monkeypatch: pytest.MonkeyPatch, **settings: dict) -> tuple[float, dict]:
    """Wall seconds of the real train flow with params `settings` (per section), and ensemble.json."""
    from flows.train import train

    raw = _params()
    for section, values in settings.items():
        raw[section] = {**raw.get(section, {}), **values}
    monkeypatch.chdir(workdir)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    train(params_path="params.yaml")
    seconds = time.perf_counter() - started
    return seconds, json.loads((workdir / "models" / "ensemble.json").read_text())


def _status(ensemble: dict) -> dict[str, str]:
    return {t["name"]: t["status"] for t in ensemble["tried"]}


@pytest.mark.slow
def test_best_with_a_time_limit_returns_within_it(warm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads that never stop by themselves (10,000 epochs, that patience), a trial cap it never
    reaches: the search and the members end at the limit, and train returns within 5 % of it."""
    endless = {"epochs": 10_000, "patience": 10_000, "preset": "best", "search_trials": 10_000}
    start_up, _ = _train(warm, monkeypatch, train={**endless, "time_limit": 0.001})
    seconds, ensemble = _train(warm, monkeypatch, train={**endless, "time_limit": LIMIT})
    print(f"start-up {start_up:.2f} s; with time_limit {LIMIT} s: {seconds:.2f} s")
    assert seconds <= 1.05 * LIMIT + start_up, (seconds, start_up)
    status = _status(ensemble)
    tried = ensemble["tried"]
    trials = {study: [t for t in tried if t.get("searched") == study] for study in ("boosted", "fused")}
    assert all(1 <= len(found) < 10_000 for found in trials.values()), status  # stopped by time
    assert status["fused"] == "trained" and status["sklearn_linear"] == "trained"
    assert status["finetuned_text"].startswith("skipped"), status
    table = _search_artifact()  # the trials, as the Prefect UI shows them
    assert [row["trial"] for row in table] == [t["name"] for t in tried if t["kind"] == "search"]


def _search_artifact() -> list[dict]:
    """The latest version of the `fuseline-search` table artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.train import SEARCH_KEY

    async def query() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SEARCH_KEY])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (latest,) = asyncio.run(query())
    data = latest.data
    return json.loads(data) if isinstance(data, str) else data


@pytest.mark.slow
def test_a_fine_tuned_member_that_would_not_fit_is_skipped_saying_why(
    warm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap members leave the fine-tuned one a few seconds; its lower pass over 400 distinct
    texts would take far longer, so it is skipped after its probe, and train ends in time."""
    settings: dict[str, dict] = {
        # three of MiniLM's six layers tuned: two epochs' backward passes on top of the lower
        # pass, about twice the time a quiet machine has left (one layer's estimate came to
        # the few seconds left, and the member then fitted and trained)
        "encoders": {"text": {"max_length": 96, "batch_size": 8, "finetune": {"layers": 3, "epochs": 2}}},
    }
    limit = 6.0
    quick = {"epochs": 2, "patience": 2}
    start_up, _ = _train(warm, monkeypatch, **settings, train={**quick, "time_limit": 0.001})
    seconds, ensemble = _train(warm, monkeypatch, **settings, train={**quick, "time_limit": limit})
    print(f"start-up {start_up:.2f} s; with time_limit {limit} s: {seconds:.2f} s")
    assert seconds <= 1.05 * limit + start_up, (seconds, start_up)
    status = _status(ensemble)
    assert status["fused"] == "trained" and status["boosted"] == "trained", status
    # where the cheap members took the whole limit (a busy machine), it never started
    assert (
        ESTIMATED.match(status["finetuned_text"]) or status["finetuned_text"] == "skipped (train.time_limit)"
    )
