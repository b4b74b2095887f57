"""A params.yaml holding only the keys a user cares about runs under a bare `dvc repro`.

The dataset has text and tabular columns and no image or audio column, as a new user's
first dataset often has; before the `params` stage, DVC refused it at parse time
(`Could not find 'data.image_root'`) and after each stage (`Parameters 'data.on_bad_value'
are missing`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.paths import copy_project_code
from tests.conftest import REPO
from tests.e2e.conftest import GIT, project_env, run_ok

pytestmark = pytest.mark.slow

MINIMAL = {
    "data": {
        "sources": [{"path": "pets.csv"}],
        "id": "pet_id",
        "target": "adopted",
        "task": "binary",
        "columns": {"text": ["description"], "numeric": ["age"], "categorical": ["kind"]},
    },
    "train": {"epochs": 3},
}


def _pets(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    adopted = rng.integers(0, 2, rows)
    words = np.array([["calm", "friendly", "playful", "gentle"], ["shy", "loud", "nervous", "old"]])
    return pd.DataFrame(
        {
            "pet_id": [f"p{i}" for i in range(rows)],
            "description": [" ".join(rng.choice(words[1 - a], 6)) for a in adopted],
            "age": rng.normal(3, 1, rows) - adopted,
            "kind": rng.choice(["cat", "dog"], rows),
            "adopted": adopted,
        }
    )


def _project(root: Path, params: dict) -> Path:
    root.mkdir()
    copy_project_code(REPO, root)
    _pets().to_csv(root / "pets.csv", index=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _init(root: Path, env: dict[str, str]) -> None:
    run_ok(["git", "init", "-q"], root, env)
    run_ok(["dvc", "init", "-q"], root, env)
    run_ok([*GIT, "add", "-A"], root, env)
    run_ok([*GIT, "commit", "-qm", "init"], root, env)


def test_minimal_params_without_media_columns_runs_under_dvc(prefect_api: str, tmp_path: Path) -> None:
    """Through align, where both old failures struck; tests/tasks/test_dvc_params.py checks that
    every key a later stage tracks resolves, and the note of issue 14 has the full run."""
    root = _project(tmp_path / "pets", MINIMAL)
    env = project_env(prefect_api)
    _init(root, env)
    run_ok(["dvc", "repro", "align"], root, env, timeout=600)
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet")
    assert len(aligned) == 120
    resolved = yaml.safe_load((root / "data" / "resolved" / "params.yaml").read_text())
    assert resolved["data"]["on_bad_value"] == "missing" and resolved["fusion"]["wide"]["crosses"] == []
    assert (root / "data" / "links" / "image").read_text().startswith("no image columns")
    assert (root / "data" / "links" / "sources" / "0-pets.csv").resolve() == (root / "pets.csv").resolve()
    # a new source row reruns ingest through the link; nothing else in params.yaml had to exist
    with (root / "pets.csv").open("a") as handle:
        handle.write("p999,calm friendly playful,2.0,cat,1\n")
    status = json.loads(run_ok(["dvc", "status", "--json"], root, env).stdout)
    assert "data/links/sources" in json.dumps(status.get("ingest"))
    assert {"extract@text", "train", "evaluate"} <= set(status)  # still to run, and parsed


def test_a_missing_required_key_is_named_by_fuseline_not_dvc(prefect_api: str, tmp_path: Path) -> None:
    params = {"data": {key: value for key, value in MINIMAL["data"].items() if key != "target"}}
    root = _project(tmp_path / "no-target", params)
    env = project_env(prefect_api)
    _init(root, env)
    import subprocess

    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "fuseline: params.yaml: invalid configuration" in result.stderr + result.stdout
    assert "data.target: Field required" in result.stderr + result.stdout
