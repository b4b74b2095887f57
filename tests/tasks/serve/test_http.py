"""The API server's request handling without a trained model: real files, real shards, a real app.

Issue 26: a request's file cells are staged from base64 or from paths under the roots (never
outside them), every refusal names its field, the server's cache never writes into the
project's, and the token and body limit guard the edge. tests/e2e/test_api.py runs the
whole server on the demo bundle.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image

from flows.api import BearerToken, BodyLimit, api_token
from tasks.config import DataConfig, params_from_dict
from tasks.errors import ConfigError
from tasks.features.cache import FeatureCache
from tasks.serve import http_cache
from tasks.serve.http_cache import ServingCache, scratch_dir
from tasks.serve.http_rows import RequestProblem, parse_request, request_schema, stage_rows
from tests.conftest import tiny_params

FINGERPRINT = {"dim": 4, "model": "test-encoder"}
PIPELINE = {"input": "test", "precision": "float32"}


@pytest.fixture(scope="module")
def data() -> DataConfig:
    """The demo's columns: category, price, title, description, photo (image), clip (audio)."""
    return params_from_dict(tiny_params()).data


def _png() -> bytes:
    """A 16 x 16 image of noise: its base64 is longer than the shortest bare base64 (128 characters)."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _row(**cells: object) -> dict[str, object]:
    row = {"item_id": "a", "category": "toys", "price": 3.5, "title": "t", "description": "d"}
    return {**row, "photo": None, "clip": None, **cells}


@pytest.fixture()
def roots(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())  # a decodable file outside the image root
    return {"image": tmp_path / "images", "audio": tmp_path / "audio"}


def _stage(data: DataConfig, roots: dict[str, Path], tmp_path: Path, *rows: dict) -> list[object]:
    table, _ = stage_rows(list(rows), data, roots, tmp_path / "staging", "request")
    return table["photo"].tolist()


def test_a_path_and_base64_bytes_are_staged_as_the_same_image(
    data: DataConfig, roots: dict[str, Path], tmp_path: Path
) -> None:
    bare = base64.b64encode(_png()).decode()
    uri = "data:image/png;base64," + bare
    cells = _stage(data, roots, tmp_path, _row(photo="a.png"), _row(photo=bare), _row(photo=uri), _row())
    staged = [(tmp_path / "staging" / cell).read_bytes() for cell in cells[:3]]
    assert staged == [_png()] * 3 and cells[3] is None


@pytest.mark.parametrize("path", ["../secret.png", "images/../../secret.png", "/etc/hostname"])
def test_a_path_outside_the_root_is_refused_naming_the_field(
    data: DataConfig, roots: dict[str, Path], tmp_path: Path, path: str
) -> None:
    with pytest.raises(RequestProblem) as refused:
        _stage(data, roots, tmp_path, _row(photo="a.png"), _row(photo=path))
    assert (refused.value.status, refused.value.field) == (422, "rows[1].photo")
    staged = [p.read_bytes() for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert staged == [_png()]  # a.png only: nothing outside the root was linked or copied


def test_bytes_that_are_no_image_are_refused_naming_the_field(
    data: DataConfig, roots: dict[str, Path], tmp_path: Path
) -> None:
    junk = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8 not a jpeg").decode()
    with pytest.raises(RequestProblem, match="cannot be decoded as an image file") as refused:
        _stage(data, roots, tmp_path, _row(photo=junk))
    assert refused.value.field == "rows[0].photo"


@pytest.mark.parametrize(
    "change, field",
    [({"price": "cheap"}, "rows[0].price"), ({"title": 3}, "rows[0].title"),
     ({"category": [1, 2]}, "rows[0].category"), ({"clip": _row()}, "rows[0].clip")],
)  # fmt: skip
def test_a_wrong_type_is_refused_naming_the_field(data: DataConfig, change: dict, field: str) -> None:
    body = json.dumps({"rows": [_row(**change)]}).encode()
    with pytest.raises(RequestProblem) as refused:
        parse_request(request_schema(data), body)
    assert (refused.value.status, refused.value.field) == (422, field)


def test_a_missing_column_is_refused_and_the_id_and_other_columns_are_optional(data: DataConfig) -> None:
    schema = request_schema(data)
    row = {k: v for k, v in _row(label=1).items() if k != "item_id"}  # no id, an extra column
    assert parse_request(schema, json.dumps({"rows": [row]}).encode())[0]["price"] == 3.5
    del row["description"]
    with pytest.raises(RequestProblem, match="rows\\[0\\].description"):
        parse_request(schema, json.dumps({"rows": [row]}).encode())


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_the_serving_cache_reads_project_shards_and_keeps_new_vectors_in_memory(tmp_path: Path) -> None:
    project = tmp_path / "cache"
    disk_key, disk_vector = b"k" * 32, np.arange(4, dtype=np.float32)
    FeatureCache(project).store(FINGERPRINT, PIPELINE).commit([disk_key], disk_vector[None], np.ones(1, bool))
    before = _files(project)
    store = ServingCache(project, tmp_path / "scratch").store(FINGERPRINT, PIPELINE)
    new_key, new_vector = b"n" * 32, np.full(4, 7.0, np.float32)
    store.commit([new_key], new_vector[None], np.ones(1, bool))
    index = store.scan()
    found = index.locate([disk_key, new_key, b"x" * 32])
    assert found[2] == -1
    for position, expected in zip(found[:2], [disk_vector, new_vector], strict=True):
        shard = store.read(index.shards[index.shard[position]])
        np.testing.assert_array_equal(shard.vectors[index.row[position]], expected)
    assert _files(project) == before  # nothing written into the project's cache


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_binding_beyond_loopback_without_a_token_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="FUSELINE_API_TOKEN"):
        api_token(host, environ={})


def test_loopback_needs_no_token_and_a_short_token_is_refused() -> None:
    assert [api_token(host, environ={}) for host in ("127.0.0.1", "localhost", "::1")] == [None] * 3
    with pytest.raises(ConfigError, match="shorter than"):
        api_token("0.0.0.0", environ={"FUSELINE_API_TOKEN": "short"})
    assert api_token("0.0.0.0", environ={"FUSELINE_API_TOKEN": "t" * 32}) == "t" * 32


@pytest.fixture()
def guarded() -> Iterator[TestClient]:
    """An app behind the server's own body limit (100 bytes) and token middleware."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodyLimit, limit=100)  # type: ignore[arg-type]
    app.add_middleware(BearerToken, token="s" * 20)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client


def test_a_request_without_the_token_is_refused(guarded: TestClient) -> None:
    assert guarded.post("/echo", content=b"x").status_code == 401
    wrong = guarded.post("/echo", content=b"x", headers={"Authorization": "Bearer " + "t" * 20})
    assert wrong.status_code == 401
    right = guarded.post("/echo", content=b"x", headers={"Authorization": "Bearer " + "s" * 20})
    assert right.json() == {"bytes": 1}


def test_a_body_over_the_limit_is_refused_even_without_a_content_length(guarded: TestClient) -> None:
    headers = {"Authorization": "Bearer " + "s" * 20}
    declared = guarded.post("/echo", content=b"x" * 101, headers=headers)
    streamed = guarded.post("/echo", content=iter([b"x" * 60, b"x" * 60]), headers=headers)
    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert streamed.json()["detail"][0]["field"] == "body"


def test_the_servers_slot_arrays_live_in_memory_where_the_system_has_a_tmpfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reserving and deleting a memory-mapped file per modality per request cost 8 ms on a disk."""
    if http_cache.MEMORY_FS.is_dir():
        scratch = scratch_dir(tmp_path / "fallback")
        assert scratch.parent == http_cache.MEMORY_FS and scratch.is_dir()
        scratch.rmdir()
    monkeypatch.setattr(http_cache, "MEMORY_FS", tmp_path / "no-tmpfs")
    assert scratch_dir(tmp_path / "fallback") == tmp_path / "fallback"
