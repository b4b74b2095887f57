"""A model bundle is refused when its parts were edited, contradict each other, or declare absurd sizes.

Issue 11, class 7: bundle.json is plain text, and edits that still parse changed predictions
silently (swapped classes), were ignored (a third class on a one-output head), redirected
reads (`image_root: /etc`), or let `hidden: 1000000000` past the shape check into a
terabyte allocation. Real bundles written by `write_bundle`, loaded by `load_bundle`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from modelzoo.heads.blocks import WIDE_SUFFIX
from modelzoo.registry import lookup, names
from tasks.errors import BundleError
from tasks.serve.promotion import decide, promote, resolve_model_dir
from tasks.train.bundle import (
    BASELINES,
    DIGEST,
    FORMAT_VERSION,
    META,
    WEIGHTS,
    BundleMeta,
    baseline_dirs,
    bundle_metric,
    head_of,
    load_bundle,
    meta_digest,
    verify_bundle,
    write_bundle,
)

IN_DIMS = {"tabular": 4, "text.title": 6, "image.photo": 5}  # three blocks: 1e9 hidden overflows
FUSION = {"head": "concat", "hidden": 8, "dropout": 0.0}


def _head(out_dim: int = 1, seed: int = 0) -> torch.nn.Module:
    head_cls = lookup("head", "concat")
    torch.manual_seed(seed)
    return head_cls(IN_DIMS, out_dim, head_cls.Config(hidden=8, dropout=0.0)).eval()


def _meta(**changes: Any) -> BundleMeta:
    fields: dict[str, Any] = {
        "task": "binary",
        "fusion": dict(FUSION),
        "in_dims": dict(IN_DIMS),
        "out_dim": 1,
        "classes": ("no", "yes"),
        "target_scaling": None,
        "encoders": {},
        "tabular": None,
        "best_epoch": 2,
        "params": {"data": {"image_root": "images"}},
    }
    fields.update(changes)
    return BundleMeta(**fields)


def _bundle(directory: Path, out_dim: int = 1, **changes: Any) -> Path:
    write_bundle(directory, _head(out_dim), _meta(out_dim=out_dim, **changes))
    return directory


def _edit(directory: Path, change: Callable[[dict[str, Any]], None], *, redigest: bool = False) -> None:
    """Edit bundle.json as a user with a text editor would; `redigest` also recomputes the digest.

    The digest is no signature, so whoever edits the file can recompute it too: the
    consistency and size checks must hold without it.
    """
    data = json.loads((directory / META).read_text())
    change(data)
    if redigest:
        data[DIGEST]["meta"] = meta_digest(data)
    (directory / META).write_text(json.dumps(data, indent=2))


# --- the digest --------------------------------------------------------------------------------


def test_a_written_bundle_carries_a_digest_and_loads(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    data = json.loads((directory / META).read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert set(data[DIGEST]) == {"weights", "meta"}
    model, meta = load_bundle(directory)
    assert meta == _meta()
    assert verify_bundle(directory) == meta


def test_reformatting_bundle_json_is_not_an_edit(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    data = json.loads((directory / META).read_text())
    (directory / META).write_text(json.dumps(data, separators=(", ", ": ")))  # other layout, same content
    assert load_bundle(directory)[1] == _meta()


def test_swapped_class_names_are_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data["classes"].reverse())
    with pytest.raises(BundleError, match=r"bundle\.json was edited after the bundle was written"):
        load_bundle(directory)


def test_a_third_class_on_a_binary_head_is_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data["classes"].append("maybe"))
    with pytest.raises(BundleError, match="digest mismatch"):
        load_bundle(directory)


def test_an_edited_image_root_is_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data["params"]["data"].update(image_root="/etc"))
    with pytest.raises(BundleError, match=r"bundle\.json was edited"):
        load_bundle(directory)


def test_replaced_weights_are_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    other = {k: v.contiguous() for k, v in _head(seed=1).state_dict().items()}  # same shapes, other values
    save_file(other, str(directory / WEIGHTS))
    with pytest.raises(BundleError, match=r"model\.safetensors changed after the bundle was written"):
        load_bundle(directory)


def test_a_bundle_without_a_digest_is_refused(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data.pop(DIGEST))
    with pytest.raises(BundleError, match="has no valid 'digest'"):
        load_bundle(directory)


def test_a_format_1_bundle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: (data.pop(DIGEST), data.update(format_version=1)))
    with pytest.raises(BundleError, match=r"format 1 is not supported.*predates bundle digests.*retrain"):
        load_bundle(directory)


def test_parquet_written_over_bundle_json_is_a_bundle_error(tmp_path: Path) -> None:
    """What `--output models/bundle.json` used to do; the next load died on UnicodeDecodeError."""
    directory = _bundle(tmp_path / "bundle")
    pq.write_table(pa.table({"row_id": ["a"], "prediction": ["yes"]}), directory / META)
    with pytest.raises(BundleError, match="unreadable bundle metadata .not UTF-8"):
        load_bundle(directory)


@pytest.mark.parametrize("text", ["[1, 2]", '"bundle"', "{" * 100_000])
def test_bundle_json_that_is_no_json_object_is_a_bundle_error(tmp_path: Path, text: str) -> None:
    directory = _bundle(tmp_path / "bundle")
    (directory / META).write_text(text)
    with pytest.raises(BundleError, match="unreadable bundle metadata"):
        load_bundle(directory)


# --- consistency, whatever the digest says -----------------------------------------------------


def test_a_third_class_is_refused_even_with_a_recomputed_digest(tmp_path: Path) -> None:
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data["classes"].append("maybe"), redigest=True)
    with pytest.raises(BundleError, match=r"classes: a binary bundle has one output and exactly 2 classes"):
        load_bundle(directory)


@pytest.mark.parametrize(
    ("out_dim", "changes", "field"),
    [
        (1, {"classes": ("a", "b", "c")}, "classes"),  # binary, 3 classes
        (2, {"classes": ("no", "yes")}, "classes"),  # binary, two outputs
        (3, {"task": "multiclass", "classes": ("a", "b")}, "classes"),  # out_dim != classes
        (1, {"task": "multiclass", "classes": ("a",)}, "classes"),  # one class is no multiclass
        (2, {"task": "multilabel", "classes": ("a", "b", "c")}, "classes"),
        (1, {"task": "regression", "classes": ("a",), "target_scaling": (0.0, 1.0)}, "out_dim"),
        (1, {"task": "regression", "classes": (), "target_scaling": None}, "target_scaling"),
        (1, {"task": "regression", "classes": (), "target_scaling": (0.0, 0.0)}, "target_scaling"),
        (1, {"target_scaling": (0.0, 1.0)}, "target_scaling"),  # scaling on a classifier
        (1, {"classes": ("yes", "yes")}, "classes"),  # not distinct
        (1, {"classes": (0, 1)}, "classes"),  # not strings
        (1, {"task": "ranking"}, "task"),
        (1, {"metric": "rmse"}, "metric"),  # selected on a metric a binary model has not
    ],
)
def test_inconsistent_metadata_is_refused_naming_the_field(
    tmp_path: Path, out_dim: int, changes: dict[str, Any], field: str
) -> None:
    directory = _bundle(tmp_path / "bundle", out_dim=out_dim, **changes)  # digest written, and valid
    with pytest.raises(BundleError, match=rf"{META}: {field}: .*refusing to load"):
        load_bundle(directory)


@pytest.mark.parametrize(
    ("task", "out_dim", "classes", "scaling"),
    [
        ("binary", 1, ("no", "yes"), None),
        ("multiclass", 3, ("a", "b", "c"), None),
        ("multilabel", 2, ("red", "round"), None),
        ("regression", 1, (), (2.5, 0.5)),
    ],
)
def test_consistent_bundles_of_every_task_load(
    tmp_path: Path, task: str, out_dim: int, classes: tuple[str, ...], scaling: tuple[float, float] | None
) -> None:
    meta = _meta(task=task, out_dim=out_dim, classes=classes, target_scaling=scaling)
    write_bundle(tmp_path / "bundle", _head(out_dim), meta)
    assert load_bundle(tmp_path / "bundle")[1] == meta


def test_a_bundle_records_its_metric_and_an_older_one_falls_back_to_the_tasks(tmp_path: Path) -> None:
    chosen = _bundle(tmp_path / "chosen", metric="balanced_accuracy")
    assert bundle_metric(load_bundle(chosen)[1]) == "balanced_accuracy"
    older = _bundle(tmp_path / "older")
    _edit(older, lambda data: data.pop("metric"), redigest=True)  # as written before the choice existed
    assert bundle_metric(load_bundle(older)[1]) == "auc"


# --- sizes are always checked ------------------------------------------------------------------


def test_a_billion_hidden_units_are_refused_quickly(tmp_path: Path) -> None:
    """The meta-device build overflows; that used to skip the check and go on to allocate terabytes."""
    directory = _bundle(tmp_path / "bundle")
    _edit(directory, lambda data: data["fusion"].update(hidden=1_000_000_000), redigest=True)
    started = time.perf_counter()
    with pytest.raises(BundleError, match="cannot build the declared head on the meta device"):
        load_bundle(directory)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("head", names("head"))
def test_absurd_sizes_are_refused_for_every_head(tmp_path: Path, head: str) -> None:
    """Whether the meta build overflows or succeeds, a declared head bigger than the weights is refused."""
    directory = _bundle(tmp_path / "bundle", fusion={"head": head, "hidden": 1_000_000_000})
    started = time.perf_counter()
    with pytest.raises(BundleError, match="meta device|do not fit"):
        load_bundle(directory)
    assert time.perf_counter() - started < 10


def _default_in_dims(head: str) -> dict[str, int]:
    dims = {"tabular": 12, "text.title": 16, "image.photo": 24}
    if getattr(lookup("head", head), "consumes_wide_blocks", False):
        dims["tabular" + WIDE_SUFFIX] = 8
    return dims


@pytest.mark.parametrize("head", names("head"))
def test_every_registered_head_builds_on_the_meta_device(head: str) -> None:
    """_check_shapes refuses a head it cannot build there, so every head must build there."""
    meta = _meta(fusion={"head": head}, in_dims=_default_in_dims(head))
    with torch.device("meta"):
        skeleton = head_of(meta)
    tensors = list(skeleton.state_dict().values())
    assert tensors and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("head", names("head"))
def test_every_registered_head_round_trips_through_a_bundle(tmp_path: Path, head: str) -> None:
    in_dims = _default_in_dims(head)
    meta = _meta(fusion={"head": head, "hidden": 16}, in_dims=in_dims)
    model = head_of(meta).eval()
    write_bundle(tmp_path / "bundle", model, meta)
    loaded, loaded_meta = load_bundle(tmp_path / "bundle")
    assert loaded_meta == meta
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


# --- bundles that were copied -------------------------------------------------------------------


def test_a_promoted_copy_and_its_baselines_still_load(tmp_path: Path) -> None:
    models = _bundle(tmp_path / "models")
    write_bundle(models / BASELINES / "tabular", _head(), _meta())
    registry = tmp_path / "registry"
    promote(registry, models, {"test": {"auc": 0.8}}, decide("auc", 0.8, None, 0.0))
    served = resolve_model_dir(registry)
    assert load_bundle(served)[1] == _meta()
    assert [load_bundle(path)[1] for path in baseline_dirs(served).values()] == [_meta()]
