"""The HTTP API and the Python API on the bundle the shared reproduced project trained.

Issue 26: the server answers `fuseline predict`'s numbers for rows sent as JSON (images and
sound as base64), refuses each bad request with a 4xx naming the field and keeps answering,
and switches to a newly promoted version without failing a request in flight; the Python
API predicts the test rows as evaluate did.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flows.api import ApiSettings, create_app
from tasks.serve.promotion import decide, promote
from tests.e2e.conftest import raw_demo_rows

pytestmark = pytest.mark.slow

Repo = tuple[Path, dict[str, str]]
ROWS = 20


@pytest.fixture(scope="module")
def project(repo: Repo) -> Iterator[Path]:
    """The project root as the working directory (the bundle's image and audio roots are relative)."""
    root, _ = repo
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root


@pytest.fixture(scope="module")
def client(project: Path) -> Iterator[TestClient]:
    settings = ApiSettings(model="models", params="params.yaml", max_body_bytes=4 * 2**20)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _json_rows(root: Path, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as a client sends them: the photo as bare base64, the sound clip as a data URI."""
    sent = []
    for record in rows.to_dict("records"):
        photo = (root / "data" / "demo" / "images" / record["photo"]).read_bytes()
        clip = (root / "data" / "demo" / "audio" / record["clip"]).read_bytes()
        record["photo"] = base64.b64encode(photo).decode()
        record["clip"] = "data:audio/wav;base64," + base64.b64encode(clip).decode()
        record["price"] = float(record["price"]) if record["price"] else None
        sent.append(record)
    return sent


def _fuseline_predict(rows: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    from flows.predict import predict

    rows.to_csv(tmp_path / "new.csv", index=False)
    predict("models", str(tmp_path / "new.csv"), str(tmp_path / "preds.parquet"), "params.yaml")
    return pd.read_parquet(tmp_path / "preds.parquet")


def test_posted_rows_get_exactly_fuseline_predicts_probabilities(
    client: TestClient, project: Path, tmp_path: Path
) -> None:
    rows = raw_demo_rows(project).head(ROWS)
    response = client.post("/predict", json={"rows": _json_rows(project, rows)})
    assert response.status_code == 200, response.text
    answered = response.json()["predictions"]
    expected = _fuseline_predict(rows, tmp_path)
    assert [p["id"] for p in answered] == expected["item_id"].tolist()
    assert [p["prediction"] for p in answered] == expected["prediction"].tolist()
    assert [p["probabilities"] for p in answered] == [{"1": p} for p in expected["prob_1"].tolist()]


def test_python_api_predicts_the_test_rows_as_evaluate_did(project: Path) -> None:
    from fuseline import load_model

    rows = raw_demo_rows(project, "test")
    table = load_model("models").predict_table(rows)
    ours = table.rename(columns={"item_id": "row_id"}).astype({"prediction": str})
    theirs = pd.read_parquet(project / "reports" / "test_predictions.parquet")
    pd.testing.assert_frame_equal(
        ours.sort_values("row_id").reset_index(drop=True),
        theirs.sort_values("row_id").reset_index(drop=True),
        check_exact=True,
    )


def _bad_requests(root: Path) -> dict[str, tuple[bytes, int, str]]:
    """name -> (body, expected status, the field the answer must name)."""
    good = raw_demo_rows(root).head(1).to_dict("records")[0]

    def body(**change: Any) -> bytes:
        row = {key: value for key, value in {**good, **change}.items() if value is not _DROP}
        return json.dumps({"rows": [row]}).encode()

    return {
        "missing column": (body(price=_DROP), 422, "rows[0].price"),
        "wrong type": (body(price="cheap"), 422, "rows[0].price"),
        "text as a number": (body(title=12), 422, "rows[0].title"),
        "undecodable image": (
            body(photo=base64.b64encode(b"\xff\xd8 not a jpeg" * 20).decode()),
            422,
            "rows[0].photo",
        ),  # fmt: skip
        "invalid base64": (body(photo="data:image/jpeg;base64,@@@@"), 422, "rows[0].photo"),
        "path outside the root": (body(photo="../../params.yaml"), 422, "rows[0].photo"),
        "absolute path": (
            body(photo=str(root / "data" / "demo" / "images" / good["photo"])),
            422,
            "rows[0].photo",
        ),  # fmt: skip
        "no such file": (body(clip="missing.wav"), 422, "rows[0].clip"),
        "body over the limit": (body(description="x" * (5 * 2**20)), 413, "body"),
        "no rows": (json.dumps({"rows": []}).encode(), 422, "rows"),
        "not json": (b"{rows:", 422, "body"),
    }


_DROP = object()


@pytest.mark.parametrize(
    "case",
    ["missing column", "wrong type", "text as a number", "undecodable image", "invalid base64",
     "path outside the root", "absolute path", "no such file", "body over the limit", "no rows", "not json"],
)  # fmt: skip
def test_a_bad_request_gets_a_4xx_naming_the_field_and_the_server_answers_on(
    client: TestClient, project: Path, case: str
) -> None:
    body, status, field = _bad_requests(project)[case]
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["field"] == field
    good = raw_demo_rows(project).head(1).to_dict("records")
    assert client.post("/predict", json={"rows": good}).status_code == 200


def test_model_and_openapi_describe_the_bundles_columns(client: TestClient) -> None:
    described = client.get("/model").json()
    assert described["task"] == "binary" and described["classes"] == ["0", "1"]
    assert set(described["input_schema"]["properties"]) >= {"title", "price", "photo", "clip"}
    schema = client.get("/openapi.json").json()
    assert "price" in schema["components"]["schemas"]["PredictRow"]["properties"]
    assert client.get("/health").json()["status"] == "ok"


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_promoted_version_is_served_without_failing_a_request(project: Path, tmp_path: Path) -> None:
    """Real uvicorn, four clients posting in a loop while the registry promotes v0002."""
    import uvicorn

    registry = tmp_path / "registry"
    decision = decide("auc", 0.8, None, 1.0)
    promote(registry, project / "models", {"test": {"auc": 0.8}}, decision)
    app = create_app(ApiSettings(model=str(registry), params="params.yaml"))
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    body = {"rows": raw_demo_rows(project).head(2).to_dict("records")}
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def post_until_stopped() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/predict", json=body)
                statuses.append(response.status_code)
                versions.append(response.json().get("version"))

    try:
        _wait_until_up(url, server)
        clients = [threading.Thread(target=post_until_stopped) for _ in range(4)]
        for client_thread in clients:
            client_thread.start()
        _wait_for(lambda: len(statuses) >= 8)
        promote(registry, project / "models", {"test": {"auc": 0.81}}, decision)
        _wait_for(lambda: "v0002" in versions[-4:])
        stop.set()
        for client_thread in clients:
            client_thread.join(timeout=60)
    finally:
        stop.set()
        server.should_exit = True
        thread.join(timeout=30)
        shutil.rmtree(registry, ignore_errors=True)
    assert statuses and set(statuses) == {200}
    assert versions[0] == "v0001" and versions[-1] == "v0002"
    assert app.state.server.batcher.batches < len(statuses)  # concurrent requests shared batches


def test_every_version_is_loaded_on_the_thread_that_predicts(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch work stays on the batcher's worker (tasks/serve/http_batch.py: an encoder's forward
    ran 2-3x slower on a thread other than the one that had loaded it), and a promoted version
    is loaded there while idle: no request waits for it, and /health names it."""
    import flows.api

    loaded_on: list[str] = []
    load_served = flows.api.load_served

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        loaded_on.append(threading.current_thread().name)
        return load_served(*args, **kwargs)

    monkeypatch.setattr(flows.api, "load_served", recording_load)
    registry = tmp_path / "registry"
    decision = decide("auc", 0.8, None, 1.0)
    promote(registry, project / "models", {"test": {"auc": 0.8}}, decision)
    try:
        with TestClient(create_app(ApiSettings(model=str(registry), params="params.yaml"))) as client:
            assert client.get("/health").json()["version"] == "v0001"
            promote(registry, project / "models", {"test": {"auc": 0.81}}, decision)
            _wait_for(lambda: client.get("/health").json()["version"] == "v0002", timeout=30)
            body = {"rows": raw_demo_rows(project).head(1).to_dict("records")}
            assert client.post("/predict", json=body).json()["version"] == "v0002"
    finally:
        shutil.rmtree(registry, ignore_errors=True)
    assert loaded_on == ["predict-batches", "predict-batches"]


def _wait_until_up(url: str, server: Any) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_for(up)


def _wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
