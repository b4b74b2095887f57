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
