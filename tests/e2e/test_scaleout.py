"""Scale-out on a real local Dask cluster (2 worker processes, started here; Ray too when
prefect-ray is installed): chunks of batch prediction and of extraction run as independent
tasks on the workers, and give the local runner's results.

Each side encodes into its own fresh cache, so the workers really run the encoders. Torch
threads differ (1 per worker vs 2 locally), so embeddings may differ in the last float bits:
probabilities are compared to 1e-5 and predicted labels exactly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]
CHUNK = 10


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def _params(root: Path, target: Path, cache: Path, **runtime: object) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cache"] = {**params.get("cache", {}), "dir": str(cache), "chunk_rows": CHUNK}
    params["runtime"] = {"task_runner": "local", **runtime}
    target.write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def _shards(cache: Path) -> dict[str, int]:
    """Shard files per cache namespace (one namespace per encoder)."""
    return {
        ns.name: len(list((ns / "shards").glob("*.parquet")))
        for ns in cache.iterdir()
        if (ns / "shards").is_dir()
    }


def _predict_locally_and_on(
    root: Path, tmp_path: Path, **runtime: object
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(on the runner, locally, the runner run's summary) for the first three chunks of demo rows."""
    from flows.predict import predict

    rows = pd.read_csv(root / "data" / "demo" / "items.csv", dtype=str, keep_default_na=False).head(3 * CHUNK)
    rows.to_csv(tmp_path / "new.csv", index=False)
    local = _params(root, tmp_path / "local.yaml", tmp_path / "cache-local")
    remote = _params(root, tmp_path / "remote.yaml", tmp_path / "cache-remote", **runtime)
    predict("models", str(tmp_path / "new.csv"), str(tmp_path / "local.parquet"), str(local))
    summary = predict("models", str(tmp_path / "new.csv"), str(tmp_path / "remote.parquet"), str(remote))
    return pd.read_parquet(tmp_path / "remote.parquet"), pd.read_parquet(tmp_path / "local.parquet"), summary


def _assert_same_predictions(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert ours["prediction"].tolist() == theirs["prediction"].tolist()
    probs = [c for c in theirs.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ours[probs].to_numpy(), theirs[probs].to_numpy(), atol=1e-5, rtol=0)


def test_batch_prediction_on_dask_equals_the_local_runner(
    repo: Repo, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo[0])
    ours, theirs, summary = _predict_locally_and_on(
        repo[0], tmp_path, task_runner="dask", address=dask_address
    )
    assert (summary["chunks"], summary["task_runner"]) == (3, "dask")
    _assert_same_predictions(ours, theirs)
    assert sorted(_shards(tmp_path / "cache-remote").values()) == [
        3,
        3,
        3,
    ]  # text, image, audio: a shard per chunk


@pytest.mark.skipif(
    importlib.util.find_spec("prefect_ray") is None, reason="needs prefect-ray (pip install prefect-ray)"
)
def test_batch_prediction_on_a_local_ray_cluster_equals_the_local_runner(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo[0])
    ours, theirs, summary = _predict_locally_and_on(repo[0], tmp_path, task_runner="ray", workers=2)
    assert (summary["chunks"], summary["task_runner"]) == (3, "ray")
    _assert_same_predictions(ours, theirs)


def test_extraction_misses_encoded_on_dask_match_local_extraction(
    repo: Repo, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extract stage's own path: with task_runner dask the workers fill the cache first."""
    from prefect import flow

    from flows.extract import embed_modality
    from tasks.config import load_params
    from tasks.features.cache import FeatureCache
    from tasks.features.extract import extract_embeddings
    from tasks.features.feature_store import read_blocks
    from tasks.paths import Layout

    root, _ = repo
    monkeypatch.chdir(root)
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet").head(4 * CHUNK)
    on_dask = load_params(
        _params(root, tmp_path / "d.yaml", tmp_path / "cd", task_runner="dask", address=dask_address)
    )
    local = load_params(_params(root, tmp_path / "l.yaml", tmp_path / "cl"))
    layout = Layout(root=tmp_path / "dask-run")

    @flow(name="extract-on-dask-test")
    def extract_text() -> object:
        return embed_modality(on_dask, "text", aligned, FeatureCache(tmp_path / "cd"), layout)

    stats = extract_text()
    extract_embeddings(local, "text", aligned, FeatureCache(tmp_path / "cl"), tmp_path / "local.parquet")
    assert stats.unique > 0 and stats.computed == 0  # the workers encoded every distinct text
    assert sum(_shards(tmp_path / "cd").values()) >= 2  # one shard per chunk of CHUNK contents
    _, dask_blocks, dask_present, _ = read_blocks(layout.feature_file("text"))
    _, local_blocks, local_present, _ = read_blocks(tmp_path / "local.parquet")
    assert dask_blocks.keys() == local_blocks.keys()
    for name in local_blocks:
        np.testing.assert_array_equal(dask_present[name], local_present[name])
        np.testing.assert_allclose(dask_blocks[name], local_blocks[name], atol=1e-5, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("prefect_ray") is not None, reason="prefect-ray is installed")
def test_ray_without_prefect_ray_is_a_config_error_saying_what_to_install() -> None:
    from flows._runtime import task_runner_for
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match="pip install prefect-ray"):
        task_runner_for("ray")
