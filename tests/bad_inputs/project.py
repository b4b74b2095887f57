"""A tiny, valid fuseline project on disk, for cases to spoil one thing at a time.

40 rows, binary target, one column of each role; every row has a real 8x8 JPEG. The
defaults keep training to a fraction of a second: a 16-wide head, two epochs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tests.bad_inputs.imagefiles import Writer, rgb_jpeg

ROWS = 40
COLOURS = ((200, 40, 40), (40, 40, 200), (40, 160, 40), (128, 128, 128))

PARAMS: dict[str, Any] = {
    "data": {
        "sources": [{"path": "items.csv"}],
        "id": "item_id",
        "target": "label",
        "task": "binary",
        "columns": {"categorical": ["category"], "numeric": ["price"], "text": ["title"], "image": ["photo"]},
        "image_root": "images",
        "split": {"seed": 3},
    },
    "encoders": {
        "text": {"model": "minilm", "max_length": 32, "batch_size": 64},
        "image": {"model": "efficientnet_lite0", "image_size": 32, "batch_size": 64},
    },
    "fusion": {"head": "concat", "hidden": 16, "dropout": 0.0},
    "train": {"epochs": 2, "lr": 0.01, "batch_size": 64, "patience": 1, "seed": 0, "device": "cpu"},
}


def row_id(n: int) -> str:
    return f"i{n:02d}"


def base_rows() -> dict[str, list[Any]]:
    return {
        "item_id": [row_id(n) for n in range(ROWS)],
        "label": ["yes" if n % 2 else "no" for n in range(ROWS)],
        "category": [("a", "b", "c", "d")[n % 4] for n in range(ROWS)],
        "price": [1.5 * n + 1.0 for n in range(ROWS)],
        "title": [f"{('red', 'blue', 'green', 'grey')[n % 4]} cup number {n}" for n in range(ROWS)],
        "photo": [f"p{n:02d}.jpg" for n in range(ROWS)],
    }


@dataclass
class Project:
    """What a case edits before the project is written: rows, params, images, file format."""

    root: Path
    rows: dict[str, list[Any]] = field(default_factory=base_rows)
    params: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(PARAMS))
    images: dict[str, Writer] = field(default_factory=dict)  # file name under images/ -> writer
    fmt: str = "csv"  # csv | parquet | jsonl
    frame: pd.DataFrame | None = None  # written as is instead of `rows` (for odd Parquet types)
    source_bytes: bytes | None = None  # written as is instead of either
    replace_bytes: tuple[bytes, bytes] | None = None  # patched into the written source file

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for n in range(ROWS):
            self.images[f"p{n:02d}.jpg"] = rgb_jpeg(COLOURS[n % 4])

    @property
    def source(self) -> Path:
        return self.root / self.params["data"]["sources"][0]["path"]

    def set(self, row: int, column: str, value: Any) -> None:
        self.rows[column][row] = value

    def image(self, row: int, name: str, writer: Writer) -> None:
        """Give row `row` the image file `name`, written by `writer`."""
        self.rows["photo"][row] = name
        self.images[name] = writer

    def write(self) -> Path:
        image_root = self.root / "images"
        image_root.mkdir(parents=True, exist_ok=True)
        for name, writer in self.images.items():
            writer(image_root / name)
        self.source.parent.mkdir(parents=True, exist_ok=True)
        if self.source_bytes is not None:
            self.source.write_bytes(self.source_bytes)
        else:
            self._write_table(self.frame if self.frame is not None else pd.DataFrame(self.rows))
        if self.replace_bytes is not None:
            old, new = self.replace_bytes
            data = self.source.read_bytes()
            assert old in data, f"{old!r} not in the written source"
            self.source.write_bytes(data.replace(old, new))
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))
        return self.root

    def _write_table(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.source, index=False)
        elif self.fmt == "parquet":
            frame.to_parquet(self.source, index=False)
        else:
            lines = (json.dumps(record, default=str) for record in frame.to_dict(orient="records"))
            self.source.write_text("".join(line + "\n" for line in lines))
