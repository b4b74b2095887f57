"""Untrusted files never run code: params.yaml, model bundles, and our own source as a check.

tests/tasks/test_storage.py already refuses a pickle (and a torch .pt) saved under the
weights' name without running it; these cases add the other ways in.
"""

from __future__ import annotations

import ast
import json
import pickle
import time
from pathlib import Path

import pytest
import torch

from modelzoo.registry import lookup
from tasks.config import load_params
from tasks.errors import BundleError, ConfigError
from tasks.train.bundle import META, BundleMeta, load_bundle, meta_digest, write_bundle
from tests.conftest import REPO

SOURCE_DIRS = ("flows", "tasks", "modelzoo")


class _Payload:
    """Unpickling this creates the marker file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _bundle(directory: Path) -> Path:
    head_cls = lookup("head", "concat")
    torch.manual_seed(0)
    model = head_cls({"tabular": 4}, 1, head_cls.Config(hidden=8, dropout=0.0))
    meta = BundleMeta(
        task="binary", fusion={"head": "concat", "hidden": 8, "dropout": 0.0}, in_dims={"tabular": 4},
        out_dim=1, classes=("a", "b"), target_scaling=None, encoders={}, tabular=None, best_epoch=1,
        params={},
    )  # fmt: skip
    write_bundle(directory, model, meta)
    return directory


# --- params.yaml -----------------------------------------------------------------------------------


def test_params_with_a_python_tag_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "params.yaml"
    path.write_text(f'data: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    assert not marker.exists()


def test_a_key_written_twice_in_params_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "train: {lr: 10.0}\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_params(path)


# --- model bundles -----------------------------------------------------------------------------------


def test_pickles_beside_a_bundle_are_never_opened(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    marker = tmp_path / "pwned"
    for name in ("model.pt", "pytorch_model.bin", "model.pkl"):
        (directory / name).write_bytes(pickle.dumps(_Payload(marker)))
    model, meta = load_bundle(directory)
    assert meta.in_dims == {"tabular": 4}
    assert not marker.exists()


def test_bundle_declaring_absurd_sizes_is_refused_before_allocating(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    meta = json.loads((directory / META).read_text())
    meta["in_dims"] = {"tabular": 10**12}  # a 10^12-wide input layer would need terabytes
    # The digest is no signature: an editor can recompute it, so the size check must hold alone.
    meta["digest"]["meta"] = meta_digest(meta)
    (directory / META).write_text(json.dumps(meta))
    started = time.perf_counter()
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(directory)
    assert time.perf_counter() - started < 30


# --- our own code -------------------------------------------------------------------------------------


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "?")  # `model.cpu().eval()` is no eval()
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _problem(call: ast.Call) -> str | None:
    name = _name(call)
    short = name.rsplit(".", 1)[-1]
    if name in ("eval", "exec", "compile"):
        return f"{name}() of data"
    unpicklers = ("pickle.", "cloudpickle.", "dill.", "joblib.", "marshal.")
    if name.startswith(unpicklers) and short in ("load", "loads"):
        return f"{name}: unpickling runs code"
    if name.endswith("read_pickle"):
        return f"{name}: unpickling runs code"
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load without weights_only=True"
    if name.endswith("np.load") or name == "numpy.load":
        if _is_true(_keyword(call, "allow_pickle")):
            return "np.load(allow_pickle=True)"
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
        return f"{name}: builds arbitrary objects"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader")
        loader_name = ast.unparse(loader) if loader is not None else ""
        if "Safe" not in loader_name and loader_name != "_Loader":
            return f"{name} with Loader={loader_name or 'default'}"
    if _is_true(_keyword(call, "trust_remote_code")):
        return "trust_remote_code=True runs code from the model repository"
    if name.endswith("Image.open") and _keyword(call, "formats") is None:
        return "Image.open without formats=: decode images through tasks/images.py"
    return None


def test_our_code_never_unpickles_evals_or_loads_yaml_unsafely() -> None:
    problems = []
    for directory in SOURCE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for call in _calls(tree):
                problem = _problem(call)
                if problem:
                    problems.append(f"{path.relative_to(REPO)}:{call.lineno}: {problem}")
    assert problems == []


def test_the_source_scan_catches_what_it_looks_for() -> None:
    """The scan above must be able to fail: each pattern it bans is found in a sample."""
    sample = """
import pickle, torch, yaml
from PIL import Image
pickle.loads(b"")
torch.load("m.pt")
yaml.load(text)
eval(expression)
Image.open(path)
model = AutoModel.from_pretrained(name, trust_remote_code=True)
"""
    found = [_problem(call) for call in _calls(ast.parse(sample))]
    assert len([p for p in found if p]) == 6
    assert _problem(ast.parse('torch.load("m.pt", weights_only=True)').body[0].value) is None  # type: ignore[attr-defined]
