"""The fused head as ONNX (tasks/serve/onnx_export.py): every registered head exports, and
onnxruntime gives PyTorch's predictions, in the task's units, for any number of rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from modelzoo.heads.blocks import WIDE_SUFFIX
from modelzoo.registry import names
from tasks.config import FusionConfig
from tasks.serve.onnx_export import ExportError, HeadGraph, export_bundle, export_head
from tasks.train.bundle import BundleMeta, write_bundle
from tasks.train.training import build_head

IN_DIMS = {"image.photo": 6, "tabular": 5, "text.title": 8}


def head_and_meta(head: str, task: str = "binary", out_dim: int = 1) -> tuple[torch.nn.Module, BundleMeta]:
    """A head of random weights (what is exported does not depend on training) and its metadata."""
    in_dims = dict(IN_DIMS)
    if head == "wide_deep":
        in_dims["tabular" + WIDE_SUFFIX] = 3  # three hashed ids a row
    fusion = FusionConfig.model_validate({"head": head, "hidden": 16, "token_dim": 8, "feature_tokens": 4})
    torch.manual_seed(0)
    model = build_head(fusion, in_dims, out_dim).eval()
    classes = ("a", "b", "c") if task == "multiclass" else ("no", "yes") if task == "binary" else ()
    meta = BundleMeta(
        task=task, fusion=fusion.model_dump(), in_dims=in_dims, out_dim=out_dim, classes=classes,
        target_scaling=(40.0, 3.0) if task == "regression" else None, encoders={}, tabular=None,
        best_epoch=1, params={},
    )  # fmt: skip
    return model, meta


def run_onnx(data: bytes, graph: HeadGraph, inputs: list[torch.Tensor]) -> np.ndarray:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in zip(graph.input_names(), inputs, strict=True)}
    return session.run(["prediction"], feed)[0]


def rows_of(meta: BundleMeta, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count)
    blocks = sorted(meta.in_dims)
    values = [
        torch.randint(0, 50, (count, meta.in_dims[b]), generator=generator).float()
        if b.endswith(WIDE_SUFFIX)
        else torch.randn(count, meta.in_dims[b], generator=generator)
        for b in blocks
    ]
    return values + [torch.rand(count, generator=generator) > 0.3 for _ in blocks]


@pytest.mark.parametrize("head", names("head"))
def test_every_registered_head_exports_and_predicts_as_pytorch_does(head: str) -> None:
    model, meta = head_and_meta(head)
    exported = export_head(model, meta)
    assert exported.report["checked"]["random_rows"]["max_abs_diff"] <= 1e-4
    assert exported.report["max_abs_diff"] == exported.report["checked"]["random_rows"]["max_abs_diff"]
    graph = HeadGraph(model, meta)
    for count in (1, 37):  # any number of rows: the first axis is free
        inputs = rows_of(meta, count)
        with torch.no_grad():
            expected = graph(*inputs)[1].numpy()
        got = run_onnx(exported.onnx, graph, inputs)
        assert got.shape == expected.shape == (count,)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert ((got > 0) & (got < 1)).all()  # P(positive), not a logit


@pytest.mark.parametrize(("task", "out_dim"), [("multiclass", 3), ("regression", 1)])
def test_the_prediction_is_in_the_task_s_units(task: str, out_dim: int) -> None:
    model, meta = head_and_meta("concat", task, out_dim)
    exported = export_head(model, meta)
    graph = HeadGraph(model, meta)
    inputs = rows_of(meta, 9)
    got = run_onnx(exported.onnx, graph, inputs)
    if task == "multiclass":
        assert got.shape == (9, 3)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    else:  # on the target's own scale: mean 40, std 3
        with torch.no_grad():
            logits = model(dict(zip(sorted(meta.in_dims), inputs[:3], strict=True)),
                           dict(zip(sorted(meta.in_dims), inputs[3:], strict=True)))  # fmt: skip
        np.testing.assert_allclose(got, logits.squeeze(-1).numpy() * 3.0 + 40.0, atol=1e-4)


def test_the_export_is_refused_inside_the_bundle_or_under_another_suffix(tmp_path: Path) -> None:
    model, meta = head_and_meta("concat")
    bundle = tmp_path / "models"
    write_bundle(bundle, model, meta)
    with pytest.raises(ExportError, match="not inside the bundle"):
        export_bundle(bundle, bundle / "head.onnx")
    with pytest.raises(ExportError, match=r"\.onnx"):
        export_bundle(bundle, tmp_path / "head.bin")
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "model.safetensors"]
