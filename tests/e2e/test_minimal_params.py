"""A params.yaml holding only the keys a user cares about runs under `dvc repro` and `dvc exp run`.

The dataset has text and tabular columns and no image or audio column, as a new user's
first dataset often has; before the `params` stage, DVC refused it at parse time
(`Could not find 'data.image_root'`) and after each stage (`Parameters 'data.on_bad_value'
are missing`). The first run is `fuseline repro` and the experiment `fuseline exp run`: DVC's
own commands, their stages forked from a warm host, so what DVC parses and records is the
same and the suite saves a minute of imports. A stage's own start, as a bare `dvc exp run`
makes it, is in tests/e2e/test_stage_host.py (no host) and tests/test_faults.py.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
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


@pytest.fixture(scope="module")
def reproduced(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The minimal project after its first `fuseline repro`, committed as a user commits it."""
    root = _project(tmp_path_factory.mktemp("minimal") / "pets", MINIMAL)
    env = project_env(prefect_api)
    _init(root, env)
    run_ok([sys.executable, "-m", "flows.cli", "repro"], root, env, timeout=900)
    run_ok([*GIT, "add", "-A"], root, env)
    run_ok([*GIT, "commit", "-qm", "first run"], root, env)
    return root, env


def test_an_experiment_is_set_as_typed_and_compared_with_the_commit(reproduced: tuple[Path, dict]) -> None:
    """`fuseline exp run -S train.lr=0.003` (DVC's `dvc exp run`, hosted) on a params.yaml that
    never named train.lr; then the experiment and the committed run side by side in `dvc exp
    show`, `dvc metrics diff` and `dvc plots diff`, each revision's numbers read from git
    (issue 25)."""
    root, env = reproduced
    committed = yaml.safe_load(run_ok(["git", "show", "HEAD:params.yaml"], root, env).stdout)
    assert committed["train"] == {**committed["train"], "epochs": 3, "lr": 0.001}  # written by the first run
    assert run_ok(["git", "status", "--porcelain"], root, env).stdout == ""  # nothing left out of the commit
    headline = json.loads(run_ok(["git", "show", "HEAD:reports/metrics.json"], root, env).stdout)
    assert headline["metric"] == "auc" and isinstance(headline["final"], float)
    ran = run_ok(
        [sys.executable, "-m", "flows.cli", "exp", "run", "-n", "lr-high", "-S", "train.lr=0.003"],
        root,
        env,
        timeout=900,
    ).stdout
    stages = {line.split("'")[1] for line in ran.splitlines() if line.startswith("Running stage")}
    assert stages == {"params", "train", "evaluate"}  # what train.lr reaches, nothing else
    assert "fuseline exp run: 2 stage(s) ran in the warm stage host" in ran  # params runs itself
    shown_csv = run_ok(["dvc", "exp", "show", "--csv"], root, env).stdout
    table = list(csv.DictReader(io.StringIO(shown_csv[shown_csv.index("Experiment,") :])))
    by_name = {row["Experiment"] or row["rev"]: row for row in table}
    assert "lr-high" in by_name
    lr = "params.yaml:train.lr"  # DVC qualifies a key two params files share (data/resolved/ has it too)
    committed_row = next(r for r in table if r["rev"] not in ("workspace",) and not r["Experiment"])
    for row in (by_name["lr-high"], committed_row):
        assert float(row["final"]) == pytest.approx(float(row["final"]))  # a number, not `!` or empty
    assert (committed_row[lr], by_name["lr-high"][lr]) == ("0.001", "0.003")
    diff = json.loads(
        run_ok(["dvc", "metrics", "diff", "HEAD", "lr-high", "--all", "--json"], root, env).stdout
    )
    final = diff["reports/metrics.json"]["final"]
    assert isinstance(final["old"], float) and isinstance(final["new"], float)
    assert final["old"] == headline["final"]
    readme = (REPO / "README.md").read_text().splitlines()
    compare = next(line for line in readme if line.startswith("dvc exp show --only-changed"))
    shown = run_ok(shlex.split(compare), root, {**env, "COLUMNS": "200"}).stdout
    header = next(line for line in shown.splitlines() if "Experiment" in line)
    assert "…" not in shown and len(max(shown.splitlines(), key=len)) <= 200
    assert {"final", "metric", "train.lr"} <= {name.split(":")[-1] for name in header.split()}
    assert "lr-high" in shown
    plots = json.loads(run_ok(["dvc", "plots", "diff", "HEAD", "lr-high", "--json"], root, env).stdout)[
        "data"
    ]
    for name in ("ROC", "Learning curve"):
        (roc,) = [entry for entry in plots[name] if entry["type"] == "vega"]
        assert roc["revisions"] == ["HEAD", "lr-high"]
        assert {point["rev"] for point in roc["content"]["data"]["values"]} == {"HEAD", "lr-high"}


def test_minimal_params_without_media_columns_runs_under_dvc(reproduced: tuple[Path, dict]) -> None:
    """Where both old failures struck (align); tests/tasks/test_dvc_params.py checks that every
    key a later stage tracks resolves."""
    root, env = reproduced
    aligned = pd.read_parquet(root / "data" / "aligned" / "aligned.parquet")
    assert len(aligned) == 120
    resolved = yaml.safe_load((root / "data" / "resolved" / "params.yaml").read_text())
    assert resolved["data"]["on_bad_value"] == "missing" and resolved["fusion"]["wide"]["crosses"] == []
    assert (root / "data" / "links" / "image").read_text().startswith("no image columns")
    assert (root / "data" / "links" / "sources" / "0-pets.csv").resolve() == (root / "pets.csv").resolve()
    # a new source row reruns ingest through the link; nothing else in params.yaml had to exist
    original = (root / "pets.csv").read_text()
    with (root / "pets.csv").open("a") as handle:
        handle.write("p999,calm friendly playful,2.0,cat,1\n")
    try:
        status = json.loads(run_ok(["dvc", "status", "--json"], root, env).stdout)
    finally:
        (root / "pets.csv").write_text(original)
    assert "data/links/sources" in json.dumps(status.get("ingest"))


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
