"""`fuseline export`: the shared reproduced project's fused head as ONNX (tests/e2e/conftest.py),
run by onnxruntime on the project's test rows against the PyTorch head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest

from tasks.paths import Layout
from tasks.serve.onnx_export import HeadGraph
from tasks.train.assemble import load_feature_set
from tasks.train.bundle import load_bundle, predict_with
from tasks.train.dataset import with_blocks

pytestmark = pytest.mark.slow


def test_the_exported_head_predicts_the_test_rows_as_pytorch_does(
    repo: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from flows.cli import main

    root, _ = repo
    monkeypatch.chdir(root)
    out = tmp_path / "head.onnx"
    main(["export", str(out)])
    assert "agrees with PyTorch" in capsys.readouterr().out

    model, meta = load_bundle(root / "models")
    test = with_blocks(load_feature_set(Layout(root), meta.task, meta.classes).of_split("test"), meta.in_dims)
    graph = HeadGraph(model, meta)
    session = onnxruntime.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    feed = {f"x.{b}": np.asarray(test.inputs[b], dtype=np.float32) for b in graph.blocks}
    feed |= {f"present.{b}": np.asarray(test.present[b], dtype=bool) for b in graph.blocks}
    got = session.run(["prediction"], feed)[0]
    np.testing.assert_allclose(got, predict_with(model, meta, test), atol=1e-5)

    report = json.loads(out.with_suffix(".json").read_text())
    aligned = pd.read_parquet(Layout(root).aligned, columns=["split"])
    assert report["checked"]["test_rows"]["rows"] == int((aligned["split"] == "test").sum()) == len(got)
    assert report["served_model"].startswith("an ensemble")  # the demo's final model: said, not hidden
