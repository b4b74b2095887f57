"""Rows sent over HTTP: their schema (from the bundle's columns), their files, and the answer.

A request is `{"rows": [{column: value, ...}, ...]}` with every column the model was trained
on (a value may be null: missing, as an empty cell is in a file) and optionally the id
column. A file cell (image, audio) is either
- the file's bytes in base64: a `data:<type>;base64,<payload>` URI, or a bare base64 string
  of at least 128 characters (a shorter one, or one with a character base64 lacks such as
  `.`, is a path); or
- a path relative to the modality's root, which must name a file under it.

Every problem is a `RequestProblem` naming the field (`rows[3].photo`) before any row reaches
the model: a request cannot stop a batch it shares with others, and nothing it names is
opened outside the roots. Each request's files are staged in a directory of its own under
the server's staging root (the bytes written, a path hard-linked or copied there), so the
batch is predicted with one root per modality, as `fuseline predict` predicts a file.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tasks.config import DataConfig
from tasks.errors import preview
from tasks.modalities import embedded
from tasks.modalities.files import FileModality, resolve_under
from tasks.serve.predict import Roots

MIN_BARE_BASE64 = 128  # shorter strings are paths: no real image or sound encodes shorter
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_DATA_URI = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


class RequestProblem(Exception):
    """A 4xx answer: the HTTP status, the field it is about and why."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message

    def detail(self) -> dict[str, Any]:
        return {"detail": [{"field": self.field, "msg": self.message}]}


@dataclass(frozen=True)
class RequestSchema:
    """The pydantic models of one bundle's request (its OpenAPI schema too)."""

    row: type[BaseModel]
    request: type[BaseModel]
    data: DataConfig


def request_schema(data: DataConfig) -> RequestSchema:
    """A row model with one required, nullable field per training column, typed by its role."""
    fields: dict[str, Any] = {}
    if data.id not in data.columns.all():  # an id that is also a feature is that feature's field
        fields["row_id_"] = (str | int | None, Field(None, alias=data.id, description="id column (optional)"))
    for index, (column, role) in enumerate(_column_roles(data)):
        fields[f"c{index}"] = (_ROLE_TYPES.get(role, str | None), Field(..., alias=column, description=role))
    row = create_model("PredictRow", __config__=ConfigDict(extra="ignore"), **fields)
    request = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(list[row], Field(..., min_length=1)),  # type: ignore[valid-type]
    )
    return RequestSchema(row, request, data)


_ROLE_TYPES: dict[str, Any] = {
    "numeric": float | None,
    "categorical": str | int | float | bool | None,
}


def _column_roles(data: DataConfig) -> list[tuple[str, str]]:
    return [(column, role) for role in data.columns.roles() for column in getattr(data.columns, role)]


def parse_request(schema: RequestSchema, body: bytes) -> list[dict[str, Any]]:
    """The body's rows as {column: value} (the id column only where sent); 422 naming the field."""
    try:
        parsed = schema.request.model_validate_json(body)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        raise RequestProblem(422, field_name(first["loc"]), first["msg"]) from None
    return [row.model_dump(by_alias=True, exclude_unset=True) for row in parsed.rows]  # type: ignore[attr-defined]


def field_name(loc: Sequence[str | int]) -> str:
    """("rows", 3, "price", "float") as `rows[3].price`: a union's member names are dropped."""
    if not loc:
        return "body"
    name = str(loc[0])
    for part in loc[1:3]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def stage_rows(
    rows: list[dict[str, Any]], data: DataConfig, roots: Roots, staging: Path, request_dir: str
) -> tuple[pd.DataFrame, list[Any]]:
    """The rows as a table for `ServedModel.predict` under the staging root, and each row's id.

    File cells become paths relative to `staging`, inside `staging/request_dir` (made for the
    first file), which the caller deletes once the request is answered. A row without its id
    gets its position. Each column's type follows from its role alone (numbers float64, the
    others Python values), never from the values a request happens to hold: a request's
    rows are typed alike alone or concatenated with other requests' in a batch.
    """
    ids = [position if row.get(data.id) is None else row[data.id] for position, row in enumerate(rows)]
    columns: dict[str, Any] = {data.id: pd.Series([str(i) for i in ids], dtype=object)}
    for column, role in _column_roles(data):
        cells = [row.get(column) for row in rows]
        if role == "numeric":
            columns[column] = pd.Series(cells, dtype="float64")
        else:
            columns[column] = pd.Series(
                [_category_cell(v) for v in cells] if role == "categorical" else cells, dtype=object
            )
    files = [(p, c) for p in embedded() if isinstance(p, FileModality) for c in p.columns(data)]
    for number, (plugin, column) in enumerate(files):
        cells = []
        for position, value in enumerate(columns[column].tolist()):
            name = f"{request_dir}/{number}-{position}"  # never the column's name: it may hold a `/`
            where = f"rows[{position}].{column}"
            cells.append(_stage_cell(plugin, value, roots.get(plugin.name), staging, name, where))
        columns[column] = pd.Series(cells, dtype=object)
    return pd.DataFrame(columns), ids


def _category_cell(value: object) -> str | None:
    """A JSON category as a file's cell holds it: 3 and 3.0 read "3" (as ingest reads a column of
    whole floats), 2.5 "2.5", true "True"; the same whatever the other rows of the batch hold."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(value)
    return None if value is None else str(value)


def staging_roots(staging: Path) -> Roots:
    """Every file modality's root for staged rows: the staging directory."""
    return {plugin.name: staging for plugin in embedded() if isinstance(plugin, FileModality)}


def _stage_cell(
    plugin: FileModality, value: object, root: Path | None, staging: Path, name: str, where: str
) -> str | None:
    """The cell's file under `staging` (as a path relative to it), or None for a missing cell."""
    if not isinstance(value, str) or not value.strip():  # null (the row model admits str | None)
        return None
    text = value
    target = staging / name
    payload = _base64_payload(text)
    if payload is not None:
        content = _decoded(payload, where)
        _check_size(plugin, len(content), where)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    else:
        source = _under_root(plugin, text, root, where)
        target.parent.mkdir(parents=True, exist_ok=True)
        _place(plugin, source, target, where)
    reason = plugin.probe(target)
    if reason is not None:
        raise RequestProblem(422, where, f"cannot be decoded as {_article(plugin.noun)}: {reason}")
    return target.relative_to(staging).as_posix()


def _base64_payload(text: str) -> str | None:
    """The base64 part of a data URI or of a bare base64 string; None for a path."""
    match = _DATA_URI.match(text)
    if match:
        return text[match.end() :]
    compact = "".join(text.split()) if len(text) >= MIN_BARE_BASE64 else text
    if len(compact) >= MIN_BARE_BASE64 and len(compact) % 4 == 0 and _BASE64.fullmatch(compact):
        return compact
    return None


def _decoded(payload: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestProblem(422, where, "not valid base64") from None


def _check_size(plugin: FileModality, size: int, where: str) -> None:
    too_big = plugin.refuse_size(size)
    if too_big is not None:
        raise RequestProblem(413, where, f"{plugin.noun} too large: {too_big}")


def _under_root(plugin: FileModality, text: str, root: Path | None, where: str) -> Path:
    """The file a path cell names, which must exist under the modality's root."""
    if root is None:
        raise RequestProblem(422, where, f"no {plugin.name} root is configured; send the file as base64")
    relative, outcome = resolve_under(text, root, root.resolve())
    if outcome == "refused":
        raise RequestProblem(
            422, where, f"path {preview(text)} leads outside the {plugin.name} root or is not a path"
        )
    if relative is None:
        hint = (
            " (file bytes shorter than 128 base64 characters need a data: URI)"
            if _BASE64.fullmatch(text)
            else ""
        )
        raise RequestProblem(422, where, f"no file {preview(text)} under the {plugin.name} root{hint}")
    return root.resolve() / relative


def _place(plugin: FileModality, source: Path, target: Path, where: str) -> None:
    """A hard link to the file under its root where the file system allows one, else a copy."""
    try:
        _check_size(plugin, source.stat().st_size, where)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    except OSError as err:
        raise RequestProblem(422, where, f"the file cannot be read ({err.strerror})") from None


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def prediction_rows(table: pd.DataFrame, task: str, ids: list[Any]) -> list[dict[str, Any]]:
    """`fuseline predict`'s table as the response: id, prediction and probabilities (value for regression)."""
    if task == "regression":
        return [{"id": i, "value": v} for i, v in zip(ids, table["prediction"].tolist(), strict=True)]
    columns = [c for c in table.columns if c.startswith("prob_")]
    labels = [c.removeprefix("prob_") for c in columns]
    probabilities = table[columns].to_numpy().tolist()
    return [
        {"id": i, "prediction": p, "probabilities": dict(zip(labels, probs, strict=True))}
        for i, p, probs in zip(ids, table["prediction"].tolist(), probabilities, strict=True)
    ]
