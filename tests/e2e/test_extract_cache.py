"""The extract flow with its cache, as users run it: a real process killed with SIGKILL, Prefect.

Real demo data, ingest and align make the aligned table; `python -m flows.extract` is the
process dvc repro runs; the reruns go through the same Prefect flow in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.paths import Layout
from tests.conftest import REPO, SHARED_DATA, tiny_params
from tests.tasks.features.test_cache import demo_aligned

pytestmark = pytest.mark.slow

ROWS = 160
CHUNK = 32


def workdir_with_aligned(root: Path, rows: int, image_size: int) -> Path:
    """A project directory holding data/aligned/aligned.parquet and a params.yaml for it."""
    aligned, images = demo_aligned(root / "source", rows)
    layout = Layout(root)
    layout.aligned_dir.mkdir(parents=True)
    aligned.to_parquet(layout.aligned, index=False)
    params = tiny_params(rows=rows)
    params["data"]["image_root"] = str(images)
    params["encoders"]["image"] = {
        "model": "efficientnet_lite0",
        "image_size": image_size,
        "batch_size": CHUNK,
    }
    params["cache"] = {"dir": ".cache/features", "chunk_rows": CHUNK}
    params["train"] = {**params["train"], "device": "cpu"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def committed_shards(root: Path) -> list[Path]:
    return sorted((root / ".cache" / "features").glob("*/shards/*.parquet"))


def test_kill_9_mid_extraction_resumes_from_committed_shards(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.extract import extract

    root = workdir_with_aligned(tmp_path, ROWS, image_size=128)
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.extract", "--modality", "image"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not committed_shards(root) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, (
        f"extract ended on its own first:\n{stderr.decode()[-2000:]}"
    )
    assert not Layout(root).feature_file("image").exists()
    survived = sum(pq.ParquetFile(p).metadata.num_rows for p in committed_shards(root))
    assert 0 < survived < ROWS

    monkeypatch.chdir(root)
    report = extract(params_path="params.yaml", modality="image")["image"]
    assert (report["reused"], report["computed"]) == (survived, ROWS - survived)
    assert len(pd.read_parquet(Layout(root).feature_file("image"))) == ROWS


def test_flow_publishes_rows_seen_computed_and_reused(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from flows.extract import ARTIFACT_KEY, extract

    root = workdir_with_aligned(tmp_path, 60, image_size=32)
    monkeypatch.chdir(root)
    extract(params_path="params.yaml", modality="image")
    state = extract(params_path="params.yaml", modality="image", return_state=True)
    # Filtered over REST: this Prefect client sends null run filters, which the server refuses.
    response = httpx.post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [ARTIFACT_KEY]},
                            "flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}},
    )  # fmt: skip
    response.raise_for_status()
    (artifact,) = response.json()
    (row,) = json.loads(artifact["data"])
    assert (row["modality"], row["rows"], row["computed"], row["reused"]) == ("image", 60, 0, 60)
    assert row["seconds"] > 0 and "computed_per_s" in row


@pytest.mark.skipif(not (SHARED_DATA / "pokemon").is_dir(), reason="../shared/data/pokemon is not present")
def test_pokemon_artwork_shared_by_two_types_is_encoded_once(tmp_path: Path) -> None:
    """Real data: pokemon.csv lists 409 Pokémon twice, once per type folder, with identical files."""
    from tasks.config import params_from_dict
    from tasks.data.align import align
    from tasks.data.ingest import ingest_sources, read_snapshots
    from tasks.features.cache import FeatureCache
    from tasks.features.extract import extract_embeddings

    table = pd.read_csv(SHARED_DATA / "pokemon" / "pokemon.csv")
    twice = table[table["name"].duplicated(keep=False)].sort_values("name").head(40)
    twice = twice.assign(row=twice["image_path"])[["row", "name", "image_path", "is_legendary", "hp"]]
    twice["is_legendary"] = (twice["hp"] > twice["hp"].median()).astype(int)  # any 2 classes will do
    twice.to_csv(tmp_path / "pokemon.csv", index=False)
    raw = tiny_params(rows=len(twice))
    raw["data"] = {
        "sources": [{"path": str(tmp_path / "pokemon.csv")}], "id": "row", "target": "is_legendary",
        "task": "binary", "columns": {"numeric": ["hp"], "image": ["image_path"]},
        "image_root": str(SHARED_DATA / "pokemon"),
    }  # fmt: skip
    raw["encoders"]["image"] = {"model": "efficientnet_lite0", "image_size": 32, "batch_size": 16}
    raw["cache"] = {"dir": str(tmp_path / "cache"), "chunk_rows": 16}
    params = params_from_dict(raw)
    ingest_sources(params.data, tmp_path / "raw")
    aligned, _ = align(params.data, read_snapshots(tmp_path / "raw"))
    stats = extract_embeddings(
        params, "image", aligned, FeatureCache(tmp_path / "cache"), tmp_path / "image.parquet"
    )
    assert (stats.values, stats.computed) == (40, 20)
