"""The trained fusion head as an ONNX graph, for runtimes without PyTorch (onnxruntime, TensorRT).

Only the head is exported. Its inputs are what train feeds it, per row: one float block per
embedded column (`text.title`, `image.photo`, ...), `tabular`, and wide_deep's hashed ids,
each with a presence mask; its outputs are the logits and the prediction in the task's units
(P(positive) for binary, class probabilities, regression values on the target's own scale),
the numbers `predict_with` gives. The encoders stay in PyTorch: each is a published model
with its own export path, and their tokenisers and image decoding are not graph operations.
The ensemble's other members (boosted trees, the linear model) are not neural graphs either;
`export_head`'s report says when the served model is an ensemble, so nobody takes the head's
numbers for the served ones.

The graph is checked against PyTorch before it is written: on real rows when the caller
has them, and on random rows with random presence masks, which reach the head's "missing"
embeddings that real rows may never use.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelzoo.heads.blocks import is_wide_block
from tasks.atomic import write_bytes, write_json
from tasks.errors import BundleError, DataError, FuselineError
from tasks.paths import Layout
from tasks.serve.promotion import resolve_model_dir
from tasks.train.assemble import load_feature_set
from tasks.train.bundle import BundleMeta, load_bundle
from tasks.train.dataset import FeatureSet, with_blocks
from tasks.train.members import read_ensemble
from tasks.train.objectives import to_prediction

OPSET = 18
TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted on a prediction
RANDOM_ROWS = 64
_INSTALL = "pip install 'fuseline[onnx]' (onnx, onnxruntime and onnxscript)"


class ExportError(FuselineError):
    """The head could not be exported, or the graph does not agree with PyTorch."""


class HeadGraph(nn.Module):
    """The head with positional inputs (blocks in sorted order, then their masks) and both outputs."""

    def __init__(self, head: nn.Module, meta: BundleMeta) -> None:
        super().__init__()
        self.head = head
        self.task = meta.task
        self.blocks = tuple(sorted(meta.in_dims))
        mean, std = meta.target_scaling if meta.target_scaling else (0.0, 1.0)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        count = len(self.blocks)
        inputs = dict(zip(self.blocks, tensors[:count], strict=True))
        present = dict(zip(self.blocks, tensors[count:], strict=True))
        logits = self.head(inputs, present).float()  # (b, out_dim)
        prediction = to_prediction(self.task, logits)
        if self.task == "regression":
            prediction = prediction * self.std + self.mean
        return logits, prediction

    def input_names(self) -> list[str]:
        return [f"x.{name}" for name in self.blocks] + [f"present.{name}" for name in self.blocks]


@dataclass(frozen=True)
class Exported:
    """The ONNX file's bytes and what the check against PyTorch found."""

    onnx: bytes
    report: dict[str, Any]


def export_bundle(model: Path, out: Path, layout: Layout | None = None) -> dict[str, Any]:
    """Export a bundle's (or a registry's current) fused head to `out` (.onnx) and its report
    beside it (`out` with .json); checked on the project's test rows when `layout` has them."""
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the export is written to a .onnx file")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such directory")
    bundle = resolve_model_dir(model)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise ExportError(f"{out}: not inside the bundle {bundle}, whose files are covered by its digests")
    head, meta = load_bundle(bundle)
    exported = export_head(head, meta, _test_rows(layout, meta))
    ensemble = read_ensemble(bundle) or {}
    weights = ensemble.get("members", {})
    served = (
        "the fused head alone"
        if set(weights) <= {"fused"} and "stacker" not in ensemble
        else ("a stacked ensemble: " if "stacker" in ensemble else "an ensemble: ")
        + ", ".join(f"{name} {weight:.2f}" for name, weight in sorted(weights.items()))
        + "; this file is its fused head only, so its predictions are not the served ones"
    )
    report = {**exported.report, "bundle": str(bundle), "served_model": served}
    write_bytes(exported.onnx, out)
    write_json(report, out.with_suffix(".json"))
    return report


def _test_rows(layout: Layout | None, meta: BundleMeta) -> FeatureSet | None:
    """The project's test rows in the head's blocks, or None where the project has none that fit."""
    if layout is None:
        return None
    try:
        features = load_feature_set(layout, meta.task, tuple(meta.classes) or None)
        return with_blocks(features.of_split("test"), dict(meta.in_dims))
    except (FileNotFoundError, KeyError, ValueError, DataError, BundleError):
        return None


def export_head(head: nn.Module, meta: BundleMeta, rows: FeatureSet | None = None) -> Exported:
    """The head as ONNX bytes, checked against PyTorch on `rows` (if given) and on random rows."""
    onnx_runtime = _require_onnx()
    graph = HeadGraph(head.eval(), meta).eval()
    example = _random_inputs(meta, rows=3, seed=0)
    rows_dim = torch.export.Dim("rows")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")  # one Dim
            program = _export(graph, example, rows_dim)
    except Exception as err:  # the exporter raises many types; the head's name says what to fix
        raise ExportError(f"the {meta.fusion.get('head')!r} head cannot be exported to ONNX: {err}") from err
    with tempfile.TemporaryDirectory() as tmp:  # save() writes large weights beside the file
        path = Path(tmp) / "head.onnx"
        program.save(path, external_data=False)
        data = path.read_bytes()
    session = onnx_runtime.InferenceSession(data, providers=["CPUExecutionProvider"])
    checks = {"random_rows": _check(session, graph, _random_inputs(meta, RANDOM_ROWS, seed=1))}
    if rows is not None and len(rows.ids):
        checks["test_rows"] = _check(session, graph, _feature_inputs(meta, rows))
    worst = max(check["max_abs_diff"] for check in checks.values())
    if not worst <= TOLERANCE:
        raise ExportError(
            f"the ONNX graph's predictions differ from PyTorch's by {worst:.3g} (> {TOLERANCE:g})"
        )
    report = {
        "head": meta.fusion.get("head"),
        "task": meta.task,
        "classes": list(meta.classes),
        "inputs": {name: _input_shape(meta, name) for name in graph.input_names()},
        "outputs": ["logits", "prediction"],
        "opset": OPSET,
        "checked": checks,
        "max_abs_diff": worst,
        "tolerance": TOLERANCE,
        "torch": torch.__version__,
    }
    return Exported(data, report)


def _export(graph: HeadGraph, example: list[Tensor], rows: Any) -> Any:
    """torch.export's exporter (the TorchScript one is deprecated), every input's first axis free."""
    return torch.onnx.export(
        graph,
        tuple(example),
        input_names=graph.input_names(),
        output_names=["logits", "prediction"],
        dynamic_shapes=(tuple({0: rows} for _ in example),),
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )


def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs {err.name}: {_INSTALL}") from None
    return onnxruntime


def _input_shape(meta: BundleMeta, name: str) -> list[Any]:
    kind, block = name.split(".", 1)
    return ["rows"] if kind == "present" else ["rows", int(meta.in_dims[block])]


def _random_inputs(meta: BundleMeta, rows: int, seed: int) -> list[Tensor]:
    """Rows of the head's input shapes: normal values (hashed-id blocks all padding) and masks
    with about a quarter of the cells absent, so the "missing" embeddings are exercised."""
    generator = torch.Generator().manual_seed(seed)
    blocks = sorted(meta.in_dims)
    values = [
        torch.zeros(rows, meta.in_dims[name])
        if is_wide_block(name)
        else torch.randn(rows, meta.in_dims[name], generator=generator)
        for name in blocks
    ]
    masks = [torch.rand(rows, generator=generator) > 0.25 for _ in blocks]
    return values + masks


def _feature_inputs(meta: BundleMeta, rows: FeatureSet) -> list[Tensor]:
    blocks = sorted(meta.in_dims)
    values = [torch.from_numpy(np.ascontiguousarray(rows.inputs[name], dtype=np.float32)) for name in blocks]
    masks = [torch.from_numpy(np.asarray(rows.present[name], dtype=bool)) for name in blocks]
    return values + masks


def _check(session: Any, graph: HeadGraph, inputs: list[Tensor]) -> dict[str, Any]:
    """Largest |onnxruntime - torch| over the predictions of these rows."""
    with torch.no_grad():
        expected = graph(*inputs)[1].numpy()
    feed = {name: tensor.numpy() for name, tensor in zip(graph.input_names(), inputs, strict=True)}
    got = session.run(["prediction"], feed)[0]
    return {"rows": len(inputs[0]), "max_abs_diff": float(np.max(np.abs(got - expected), initial=0.0))}
