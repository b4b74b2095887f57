from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from modelzoo.registry import lookup
from tasks.atomic import atomic_dir, atomic_path, write_json
from tasks.errors import BundleError
from tasks.features.feature_store import read_blocks, write_blocks
from tasks.train.bundle import FORMAT_VERSION, META, WEIGHTS, BundleMeta, load_bundle, write_bundle

IN_DIMS = {"tabular": 4, "text.t": 8}
FUSION = {"head": "concat", "hidden": 16, "dropout": 0.0}


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def leftovers(directory: Path) -> list[str]:
    """Hidden temp files/dirs that atomic writes create beside their targets."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- feature store ---------------------------------------------------------------------------


def test_feature_blocks_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.array(["b", "a", "007", "x y"], dtype=object)
    blocks = {
        "text.title": rng.normal(size=(4, 8)).astype(np.float32),
        "image.photo": rng.normal(size=(4, 3)).astype(np.float32),
    }
    blocks["text.title"][1, 2] = np.nan
    present = {"text.title": np.array([True, False, True, True]), "image.photo": np.zeros(4, bool)}
    metadata = {"encoder": {"name": "minilm", "dim": 8}, "version": [1, 2], "scale": 0.125}
    path = tmp_path / "features" / "text.parquet"

    write_blocks(path, ids, blocks, present, metadata)
    got_ids, got_blocks, got_present, got_metadata = read_blocks(path)

    assert got_ids.tolist() == ["b", "a", "007", "x y"]
    assert set(got_blocks) == set(blocks) and set(got_present) == set(present)
    for name in blocks:
        assert got_blocks[name].dtype == np.float32
        assert got_blocks[name].shape == blocks[name].shape
        np.testing.assert_array_equal(got_blocks[name], blocks[name])
        assert got_present[name].dtype == bool
        np.testing.assert_array_equal(got_present[name], present[name])
    assert got_metadata == metadata


def test_float64_blocks_are_stored_as_float32(tmp_path: Path) -> None:
    matrix = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_blocks(
        tmp_path / "f.parquet",
        np.array(["1", "2", "3"]),
        {"tabular": matrix},
        {"tabular": np.ones(3, bool)},
        {},
    )
    _, blocks, _, _ = read_blocks(tmp_path / "f.parquet")
    np.testing.assert_array_equal(blocks["tabular"], matrix.astype(np.float32))


def test_feature_file_with_no_blocks_keeps_ids_and_metadata(tmp_path: Path) -> None:
    write_blocks(tmp_path / "f.parquet", np.array(["1", "2"]), {}, {}, {"empty": True})
    ids, blocks, present, metadata = read_blocks(tmp_path / "f.parquet")
    assert ids.tolist() == ["1", "2"]
    assert blocks == {} and present == {}
    assert metadata == {"empty": True}


def test_feature_file_with_no_rows_round_trips(tmp_path: Path) -> None:
    write_blocks(
        tmp_path / "f.parquet",
        np.array([], dtype=object),
        {"tabular": np.zeros((0, 5))},
        {"tabular": np.zeros(0, bool)},
        {},
    )
    ids, blocks, present, _ = read_blocks(tmp_path / "f.parquet")
    assert len(ids) == 0
    assert blocks["tabular"].shape == (0, 5)
    assert present["tabular"].shape == (0,)


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_path_replaces_the_file_when_the_block_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_path_creates_nothing_when_the_first_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target):
        raise RuntimeError("boom")
    assert not target.exists()
    assert leftovers(target.parent) == []


def test_atomically_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    write_json({"a": 1}, tmp_path / "m.json")
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~current_umask()


def test_write_json_is_sorted_and_indented(tmp_path: Path) -> None:
    write_json({"b": 1, "a": [1, 2]}, tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"


def test_atomic_dir_replaces_the_directory_whole(tmp_path: Path) -> None:
    target = tmp_path / "models"
    (target / "nested").mkdir(parents=True)
    (target / "old.txt").write_text("old")
    (target / "nested" / "stale.bin").write_bytes(b"stale")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # the old tree stays until the swap
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["new.txt"]
    assert (target / "new.txt").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_atomic_dir_creates_a_new_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
    assert (target / "x").read_text() == "x"
    assert leftovers(target.parent) == []


def test_atomic_dir_keeps_the_old_directory_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path) == []


def test_atomic_dir_cleans_up_temp_dirs_left_by_a_crash(tmp_path: Path) -> None:
    (tmp_path / ".models.abc123.tmp").mkdir()
    (tmp_path / ".models.abc123.tmp" / "partial").write_text("x")
    (tmp_path / ".models.def456.old").mkdir()
    with atomic_dir(tmp_path / "models") as tmp:
        (tmp / "x").write_text("x")
    assert leftovers(tmp_path) == []


def test_atomic_dir_gets_ordinary_permissions(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "models") as tmp:
        (tmp / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "models").stat().st_mode) == 0o777 & ~current_umask()


# --- model bundles ---------------------------------------------------------------------------


def tiny_head() -> torch.nn.Module:
    head_cls = lookup("head", "concat")
    torch.manual_seed(0)
    return head_cls(IN_DIMS, 1, head_cls.Config(hidden=16, dropout=0.0)).eval()


def bundle_meta(**changes: object) -> BundleMeta:
    fields: dict = {
        "task": "binary",
        "fusion": dict(FUSION),
        "in_dims": dict(IN_DIMS),
        "out_dim": 1,
        "classes": ("neg", "pos"),
        "target_scaling": None,
        "encoders": {"text": {"model": "minilm"}},
        "tabular": {"categorical": {"c": ["a"]}, "numeric": {}},
        "best_epoch": 3,
        "params": {"train": {"lr": 0.001}},
    }
    fields.update(changes)
    return BundleMeta(**fields)


def batch(rows: int = 5) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    inputs = {name: torch.randn(rows, dim, generator=generator) for name, dim in IN_DIMS.items()}
    present = {"tabular": torch.ones(rows, dtype=torch.bool), "text.t": torch.tensor([1, 0, 1, 1, 0]).bool()}
    return inputs, present


def test_bundle_round_trips_metadata_and_outputs(tmp_path: Path) -> None:
    model = tiny_head()
    meta = bundle_meta()
    write_bundle(tmp_path / "bundle", model, meta)

    loaded, loaded_meta = load_bundle(tmp_path / "bundle")

    assert loaded_meta == meta
    assert not loaded.training
    inputs, present = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs, present), model(inputs, present), rtol=0, atol=0)


def test_bundle_round_trips_regression_target_scaling(tmp_path: Path) -> None:
    meta = bundle_meta(task="regression", classes=(), target_scaling=(2.5, 0.5))
    write_bundle(tmp_path / "bundle", tiny_head(), meta)
    assert load_bundle(tmp_path / "bundle")[1] == meta


def test_bundle_holds_only_safetensors_and_json(tmp_path: Path) -> None:
    write_bundle(tmp_path / "bundle", tiny_head(), bundle_meta())
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [META, WEIGHTS]
    assert json.loads((tmp_path / "bundle" / META).read_text())["format_version"] == FORMAT_VERSION


def test_torch_pickle_renamed_to_safetensors_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta())
    torch.save(tiny_head().state_dict(), directory / WEIGHTS)
    with pytest.raises(BundleError, match="refusing to load"):
        load_bundle(directory)


class _Payload:
    """Unpickling this creates a file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_without_being_run(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta())
    marker = tmp_path / "pwned"
    (directory / WEIGHTS).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BundleError):
        load_bundle(directory)
    assert not marker.exists()


def test_directory_without_a_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_bundle_from_another_format_version_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta())
    data = json.loads((directory / META).read_text())
    (directory / META).write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(directory)


def test_weights_that_do_not_fit_the_declared_head_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta(fusion={**FUSION, "hidden": 32}))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(directory)


def test_bundle_naming_an_unregistered_head_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta(fusion={"head": "not-a-head"}))
    with pytest.raises(BundleError, match="not-a-head"):
        load_bundle(directory)


def test_unreadable_bundle_metadata_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "bundle"
    write_bundle(directory, tiny_head(), bundle_meta())
    (directory / META).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(directory)
