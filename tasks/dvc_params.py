"""What DVC watches, derived from params.yaml with fuseline's defaults filled in.

DVC reads params.yaml with its own loader: a stage that tracks `data.on_bad_value` fails
when the key is absent, and dvc.yaml's `${data.image_root}` fails to parse, even though the
config model has a default for both. So the first stage (`params`) writes two things that
every later stage tracks instead:

- `data/resolved/params.yaml`: the whole validated config, every default written out. A
  user's params.yaml holds only the keys they care about; `dvc exp run -S key=value` still
  edits params.yaml, this stage reruns, and only stages whose resolved keys changed follow.
- `data/links/`: a symlink per source file (`sources/`) and per file modality root
  (`image`, `audio`), so dvc.yaml names fixed paths and DVC hashes what they point at. A
  modality with no columns gets a one-line file instead: nothing to watch, nothing to
  configure. The links are plain files in git, not DVC outputs (DVC refuses an output that
  points at what a later stage writes, as the demo's images are), so commit them with
  dvc.lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tasks.atomic import write_text
from tasks.config import FusionConfig, Params, load_params, params_from_dict
from tasks.errors import ConfigError
from tasks.modalities import embedded
from tasks.paths import Layout


def resolved_params_text(params: Params) -> str:
    """The config as DVC should see it: every key, sorted, stable across runs."""
    resolved = params.model_dump(mode="json")
    resolved["fusion"] = fusion_with_defaults(params.fusion)
    return yaml.safe_dump(resolved, sort_keys=True, default_flow_style=False)


def fusion_with_defaults(fusion: FusionConfig) -> dict[str, Any]:
    """Every registered head's options with their defaults, the chosen head's winning a shared key.

    `fusion` keeps only the keys written in params.yaml, but stages read others' defaults
    (extract@tabular reads `fusion.wide` whichever head trains), so DVC must see them too.
    """
    from modelzoo.registry import lookup, names

    merged: dict[str, Any] = {}
    for name in names("head"):
        if name != fusion.head:
            merged.update(lookup("head", name).Config().model_dump(mode="json"))
    merged.update(fusion.head_config().model_dump(mode="json"))
    merged.update(fusion.options())
    return {**merged, "head": fusion.head}


def link_targets(params: Params, layout: Layout) -> dict[str, Path | None]:
    """Link name under data/links -> what it points at (None: the modality has no columns)."""
    targets: dict[str, Path | None] = {}
    for index, source in enumerate(params.data.sources):
        targets[f"sources/{index}-{Path(source.path).name}"] = Path(source.path)
    for modality in embedded():
        if not modality.has_files:
            continue
        root = modality.root(params.data) if modality.columns(params.data) else None
        if root is not None:
            _refuse_root_holding_outputs(root, modality.name, layout)
        targets[modality.name] = root
    return targets


def _refuse_root_holding_outputs(root: Path, name: str, layout: Layout) -> None:
    """A root that contains data/links would make DVC hash the pipeline's own outputs (and loop)."""
    links = layout.links.resolve()
    resolved = (layout.root / root).resolve()
    if resolved == links or resolved in links.parents:
        raise ConfigError(
            f"data.{name}_root: {str(root)!r} contains the project's data/ outputs; write the folder "
            f"your {name} paths are relative to, e.g. `{name}_root: data/{name}s`"
        )


def write_links(targets: dict[str, Path | None], layout: Layout) -> None:
    """Make data/links match `targets` exactly; each link is replaced in one rename."""
    links = layout.links
    wanted = set(targets)
    for name, target in targets.items():
        path = links / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if target is None:  # the rename replaces a link itself, never what it points at
            write_text(f"no {name} columns in params.yaml: nothing for align to watch\n", path)
            continue
        pointer = target if target.is_absolute() else Path(os.path.relpath(layout.root / target, path.parent))
        if not (path.is_symlink() and Path(os.readlink(path)) == pointer):
            _replace_with_link(path, pointer)
    for stale in sorted(links.rglob("*"), reverse=True):
        name = stale.relative_to(links).as_posix()
        if name in wanted or any(w.startswith(f"{name}/") for w in wanted):
            continue
        if stale.is_dir() and not stale.is_symlink():
            stale.rmdir()
        else:
            stale.unlink()


def _replace_with_link(path: Path, pointer: Path) -> None:
    """A new link under a temp name, renamed over the old entry (atomic_path would fsync through
    the link, and the demo's targets do not exist until its stage runs)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(pointer)
    os.replace(temp, path)


def resolve(params_path: str | Path = "params.yaml", layout: Layout | None = None) -> Params:
    """Validate params.yaml, fill in its missing defaults, write what DVC tracks.

    A problem is fuseline's message, not DVC's.
    """
    layout = layout or Layout()
    params = load_params(params_path)
    added = fill_missing_keys(params_path, params)
    if added:
        shown = ", ".join(added[:6]) + (f" and {len(added) - 6} more" if len(added) > 6 else "")
        print(
            f"params: wrote {len(added)} defaults into {params_path} ({shown}), so that"
            " `dvc exp run -S key=value` can set any key; commit it with dvc.lock"
        )
    targets = link_targets(params, layout)
    write_text(resolved_params_text(params), layout.resolved_params)
    write_links(targets, layout)
    return params


# --- every key in params.yaml, so `dvc exp run -S key=value` can set it ---------------------


def fill_missing_keys(params_path: str | Path, params: Params) -> list[str]:
    """Write each default the user's params.yaml leaves out into it; the dotted keys added.

    DVC applies `dvc exp run -S train.lr=0.003` with Hydra in struct mode: a key the file
    does not hold is refused ("Key 'train' is not in struct"), so on a minimal params.yaml
    only `+train.lr=...` would work. The first `dvc repro` therefore writes the defaults in,
    keeping the user's keys, values, order and comments (a round-trip YAML edit), and only
    when the file then means exactly what it meant before; lists are never touched.
    """
    import io

    path = Path(params_path)
    text = path.read_text(encoding="utf-8")
    editor = _round_trip_editor(text)
    document = editor.load(text)
    defaults = editor.load(resolved_params_text(params))  # round-trip: 5.0e-05 stays a float to PyYAML
    added = _add_missing(document, defaults, "")
    if not added:
        return []
    out = io.StringIO()
    editor.dump(document, out)
    filled = out.getvalue()
    if resolved_params_text(params_from_dict(yaml.safe_load(filled), str(path))) != resolved_params_text(
        params
    ):
        return []  # never change what a run means; DVC's -S then needs `+key=value` for these keys
    write_text(filled, path)
    return added


def _round_trip_editor(text: str) -> Any:
    """A ruamel round-trip loader/dumper that indents as this file does (mapping and list dashes)."""
    from ruamel.yaml import YAML

    mapping, offset = 2, 0
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    indents = [len(line) - len(line.lstrip()) for line in lines if not line.lstrip().startswith("- ")]
    nested = [i for i in indents if i > 0]
    if nested:
        mapping = min(nested)
    for before, line in zip(lines, lines[1:], strict=False):
        if line.lstrip().startswith("- ") and before.rstrip().endswith(":"):
            offset = max(0, (len(line) - len(line.lstrip())) - (len(before) - len(before.lstrip())))
            break
    editor = YAML()
    editor.width = 4096
    editor.representer.add_representer(  # `demo: null`, not a bare `demo:`
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    editor.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return editor


def _add_missing(document: Any, defaults: dict[str, Any], prefix: str) -> list[str]:
    added: list[str] = []
    for key, value in defaults.items():
        if key not in document:
            document[key] = value
            added.append(prefix + key)
        elif isinstance(value, dict) and isinstance(document[key], dict):
            added += _add_missing(document[key], value, f"{prefix}{key}.")
    return added
