"""The `params` stage: the resolved config DVC tracks and the links it watches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tasks.config import params_from_dict
from tasks.dvc_params import resolve, resolved_params_text
from tasks.errors import ConfigError
from tasks.paths import Layout
from tests.conftest import REPO

DATA = {"sources": [{"path": "items.csv"}], "id": "id", "target": "y", "task": "binary"}


def _write(root: Path, data: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_resolved_params_write_every_default_and_every_heads_options() -> None:
    params = params_from_dict({"data": {**DATA, "columns": {"text": ["t"]}}, "fusion": {"head": "gated"}})
    resolved = yaml.safe_load(resolved_params_text(params))
    assert resolved["data"]["on_bad_value"] == "missing" and resolved["data"]["demo"] is None
    assert resolved["fusion"]["head"] == "gated"
    assert resolved["fusion"]["wide"]["crosses"] == []  # wide_deep's, read by extract@tabular
    assert resolved["train"]["epochs"] == params.train.epochs


def test_links_point_at_sources_and_declared_roots_only(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    path = _write(tmp_path, {**DATA, "columns": {"image": ["photo"]}, "image_root": "photos"})
    layout = Layout(tmp_path)
    resolve(path, layout)
    assert (layout.links / "image").is_symlink() and (layout.links / "image").resolve() == tmp_path / "photos"
    assert os.readlink(layout.links / "sources" / "0-items.csv") == "../../../items.csv"
    assert (layout.links / "audio").read_text().startswith("no audio columns")
    # dropping the image column replaces the link with the note, and a renamed source's old link goes
    path = _write(tmp_path, {**DATA, "sources": [{"path": "other.csv"}], "columns": {"text": ["t"]}})
    resolve(path, layout)
    assert not (layout.links / "image").is_symlink()
    assert [p.name for p in (layout.links / "sources").iterdir()] == ["0-other.csv"]
    assert (tmp_path / "photos").is_dir()  # the note replaced the link, not the folder


def test_a_root_holding_the_outputs_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {**DATA, "columns": {"image": ["photo"]}})  # image_root defaults to "."
    with pytest.raises(ConfigError, match=r"data.image_root: '\.' contains the project's data/ outputs"):
        resolve(path, Layout(tmp_path))


NULL_BY_DEFAULT = {"data.demo", "data.split.column"}


def _get(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        assert isinstance(tree, dict) and part in tree, f"{dotted}: missing from the resolved params"
        tree = tree[part]
    return tree


def test_every_key_a_stage_tracks_resolves_for_a_minimal_params_file() -> None:
    """DVC fails a stage after it ran when one of its keys is absent: check all of them up front."""
    params = params_from_dict({"data": {**DATA, "columns": {"text": ["t"], "numeric": ["n"]}}})
    resolved = yaml.safe_load(resolved_params_text(params))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    tracked = []
    for name, stage in stages.items():
        items = stage.get("foreach", {None: {}})
        for key, item in items.items():
            for entry in stage.get("do", stage).get("params", []):
                for dotted in next(iter(entry.values())):
                    for field, value in item.items():
                        dotted = dotted.replace(f"${{item.{field}}}", value)
                    tracked.append((f"{name}@{key}" if key else name, dotted))
    assert len(tracked) > 20
    for stage, dotted in tracked:
        assert _get(resolved, dotted) is not None or dotted in NULL_BY_DEFAULT, (stage, dotted)


MINIMAL_TEXT = """# my pets
data:
  sources:
    - path: items.csv   # the export
  id: id
  target: y
  task: binary
  columns: {text: [t], numeric: [n]}
train:
  epochs: 3   # quick
"""


def test_the_params_stage_writes_every_default_in_keeping_the_users_lines(tmp_path: Path) -> None:
    """Without the keys in the file, DVC's `-S train.lr=0.003` is refused (Hydra struct mode)."""
    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL_TEXT)
    before = resolved_params_text(params_from_dict(yaml.safe_load(MINIMAL_TEXT)))
    resolve(path, Layout(tmp_path))
    text = path.read_text()
    filled = yaml.safe_load(text)
    assert text.startswith("# my pets\ndata:\n  sources:\n    - path: items.csv   # the export\n  id: id\n")
    assert "  epochs: 3   # quick\n" in text and "  demo: null\n" in text  # comments, order, list style kept
    assert filled["train"]["epochs"] == 3 and filled["train"]["lr"] == 0.001
    assert filled["data"]["split"]["seed"] == 42 and filled["data"]["columns"]["image"] == []
    assert filled["evaluate"] and filled["monitor"]["threshold"]["psi"] == 0.2
    assert resolved_params_text(params_from_dict(filled)) == before  # the run means the same
    resolve(path, Layout(tmp_path))
    assert path.read_text() == text  # a filled file is left alone


def test_dvcs_own_set_param_works_on_the_filled_file_and_not_before(tmp_path: Path) -> None:
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(MINIMAL_TEXT)
    with pytest.raises(InvalidArgumentError):
        apply_overrides(path, ["train.lr=0.003"])
    resolve(path, Layout(tmp_path))
    apply_overrides(path, ["train.lr=0.003", "fusion.head=gated", "data.split.seed=7"])
    edited = yaml.safe_load(path.read_text())
    assert (edited["train"]["lr"], edited["fusion"]["head"], edited["data"]["split"]["seed"]) == (
        0.003,
        "gated",
        7,
    )
