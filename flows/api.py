"""`fuseline api`: predictions over HTTP from the registry's current model, or a bundle.

FastAPI + uvicorn (installed with Prefect already; LitServe and BentoML would add a
dependency for the two things built here in a few dozen lines: dynamic batching, in
tasks/serve/http_batch.py, and the model swap, in tasks/serve/served.py). The request
handling (schema, decoding, staging of files) is tasks/serve/http_rows.py; this module is the
edge: routes, the token, the body limit and the server's start.

    POST /predict   {"rows": [{column: value}]} -> {"version", "predictions": [{"id", ...}]}
    GET  /health    {"status": "ok", "version"}
    GET  /model     version, task, classes, columns, input schema, test metrics
    GET  /docs      the OpenAPI schema, its request body built from the served model's columns

Prediction is `ServedModel.predict`, the steps `fuseline predict` runs on a file, so the
answers are the same numbers. It binds 127.0.0.1 unless told otherwise; bound elsewhere it
requires the bearer token in $FUSELINE_API_TOKEN and refuses to start without one.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flows._commands import parse_roots
from tasks.config import load_params
from tasks.device import use_all_cores
from tasks.errors import ConfigError, DataError, FuselineError
from tasks.serve.http_batch import DEFAULT_WAIT_S, Batcher
from tasks.serve.http_cache import ServingCache, scratch_dir
from tasks.serve.http_rows import (
    RequestProblem,
    RequestSchema,
    parse_request,
    prediction_rows,
    request_schema,
    stage_rows,
    staging_roots,
)
from tasks.serve.promotion import current_entry
from tasks.serve.served import (
    ModelSlot,
    ServedModel,
    load_served,
    machine_cache_dir,
    with_encoders_loaded,
)

log = logging.getLogger(__name__)

TOKEN_ENV = "FUSELINE_API_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_MAX_BODY_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ApiSettings:
    """What `fuseline api` was asked for."""

    model: str
    params: str | None = "params.yaml"
    roots: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required (bearer) when set
    batch_wait_ms: float = DEFAULT_WAIT_S * 1000  # the longest a batch waits for requests arriving
    max_batch_rows: int = 256
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ConfigError(f"--batch-wait-ms {self.batch_wait_ms:g}: expected 0 to 10000 milliseconds")
        if self.max_batch_rows < 1 or self.max_body_bytes < 1:
            raise ConfigError("--max-batch-rows and --max-body-bytes must be at least 1")


class PredictResponse(BaseModel):
    """The answer's shape, for the OpenAPI schema (classification; regression gives `value`)."""

    version: str | None
    predictions: list[dict[str, Any]]


class Server:
    """What the routes share: the model slot, the batcher and the staging directory."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.staging = Path(tempfile.mkdtemp(prefix="fuseline-api-"))
        self.scratch = scratch_dir(self.staging / ".scratch")
        try:
            self._start(settings)
        except BaseException:
            self._remove_directories()
            raise

    def _start(self, settings: ApiSettings) -> None:
        """The batcher's worker loads every version and predicts every batch: the model's torch
        work stays on that one thread (tasks/serve/http_batch.py says why). The other threads
        read the loaded version only (`loaded()`); the worker follows the registry's pointer."""
        cache = ServingCache(machine_cache_dir(settings.params), self.scratch)
        self._schema: tuple[ServedModel, RequestSchema] | None = None
        wait_s = settings.batch_wait_ms / 1000
        self.batcher = Batcher(
            lambda: self.slot.current(), staging_roots(self.staging), wait_s, settings.max_batch_rows
        )

        def load_slot() -> None:  # assigned on the worker: its first idle check finds the slot there
            self.slot = ModelSlot(
                Path(settings.model),
                lambda: with_encoders_loaded(load_served(settings.model, cache, settings.roots)),
            )

        try:
            self.batcher.on_worker(load_slot)
        except BaseException:
            self.batcher.close()
            raise

    def schema(self, model: ServedModel) -> RequestSchema:
        """The request models of this version (built once per loaded version)."""
        built = self._schema
        if built is None or built[0] is not model:
            built = self._schema = (model, request_schema(model.data))
        return built[1]

    def close(self) -> None:
        self.batcher.close()
        self._remove_directories()

    def _remove_directories(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    async def predict(self, request: Request) -> dict[str, Any]:
        """Read, validate and stage the rows (in a thread: decoding and writing files block), then wait for
        their batch; batches started meanwhile wait for this request (Batcher.arriving)."""
        request_dir = uuid.uuid4().hex
        try:
            with self.batcher.arriving():
                body = await request.body()
                frame, ids = await run_in_threadpool(self._staged, body, request_dir)
                prediction = self.batcher.submit(frame)
            table, predicted_by = await asyncio.wrap_future(prediction)
        finally:
            self._remove(self.staging / request_dir)
        task = predicted_by.predictor.meta.task
        return {"version": predicted_by.version, "predictions": prediction_rows(table, task, ids)}

    @staticmethod
    def _remove(directory: Path) -> None:
        """Delete a request's staged files off the event loop (unlinking blocks on a disk that discards)."""
        if directory.exists():
            asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, directory, True)

    def _staged(self, body: bytes, request_dir: str) -> tuple[Any, list[Any]]:
        model = self.slot.loaded()
        rows = parse_request(self.schema(model), body)
        return stage_rows(rows, model.data, model.roots, self.staging, request_dir)

    def describe(self) -> dict[str, Any]:
        """GET /model: what is served and what it expects."""
        model = self.slot.loaded()
        meta, data = model.predictor.meta, model.data
        return {
            "version": model.version,
            "task": meta.task,
            "target": data.target,
            "id": data.id,
            "classes": list(meta.classes),
            "metric": meta.metric,
            "test_metrics": model.metrics,
            "columns": {role: list(getattr(data.columns, role)) for role in data.columns.roles()},
            "input_schema": self.schema(model).row.model_json_schema(),
        }


def create_app(settings: ApiSettings) -> FastAPI:
    """The application on a loaded model; the model fails to load here, before any port is bound."""
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()

    app = FastAPI(title="fuseline", summary="Predictions from a fuseline model bundle", lifespan=lifespan)
    app.state.server = server

    @app.get("/health")
    def health() -> dict[str, Any]:
        batcher = server.batcher
        version = server.slot.loaded().version
        return {"status": "ok", "version": version, "batches": batcher.batches, "requests": batcher.requests}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return server.describe()

    @app.post("/predict", responses={200: {"model": PredictResponse}})
    async def predict(request: Request) -> JSONResponse:
        try:
            return JSONResponse(await server.predict(request))
        except RequestProblem as problem:
            return JSONResponse(problem.detail(), status_code=problem.status)
        except _TooLarge as too_large:
            return JSONResponse(too_large.problem.detail(), status_code=413)
        except DataError as err:
            return _problem(422, err.column or "rows", str(err))
        except FuselineError as err:
            return _problem(500, "model", str(err))
        except Exception:  # noqa: BLE001 - logged; the server answers the next request
            log.exception("POST /predict failed")
            return _problem(500, "server", "internal error (logged by the server)")

    app.openapi = lambda: _openapi(app, server)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    if settings.token:
        app.add_middleware(BearerToken, token=settings.token)  # type: ignore[arg-type]
    return app


def _problem(status: int, field_name: str, message: str) -> JSONResponse:
    return JSONResponse(RequestProblem(status, field_name, message).detail(), status_code=status)


def _openapi(app: FastAPI, server: Server) -> dict[str, Any]:
    """FastAPI's schema with /predict's body described by the served version's row model."""
    model = server.slot.loaded()
    schema = get_openapi(title=app.title, version=model.version or "bundle", routes=app.routes)
    body = server.schema(model).request.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(body.pop("$defs", {}))
    components["PredictRequest"] = body
    schema["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
    return schema


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.problem = RequestProblem(
            413, "body", f"the request body is over the limit of {limit:,} bytes (--max-body-bytes)"
        )


class BodyLimit:
    """413 for a body over the limit: by its Content-Length before reading, else while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse(_TooLarge(self.limit).problem.detail(), status_code=413)(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._counted(receive), watched)
        except _TooLarge as too_large:
            if started:
                raise
            await JSONResponse(too_large.problem.detail(), status_code=413)(scope, receive, send)

    def _counted(self, receive: Receive) -> Callable[[], Awaitable[Message]]:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge(self.limit)
            return message

        return counted


class BearerToken:
    """401 unless `Authorization: Bearer <token>` matches (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self.expected):
                problem = RequestProblem(
                    401, "authorization", f"a valid bearer token (${TOKEN_ENV}) is required"
                )
                response = JSONResponse(
                    problem.detail(), status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_token(host: str, environ: dict[str, str] | None = None) -> str | None:
    """The token to require: $FUSELINE_API_TOKEN; refused when absent or short on a non-loopback host."""
    token = (os.environ if environ is None else environ).get(TOKEN_ENV) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"${TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters; use a long random one")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} serves beyond this machine: set ${TOKEN_ENV} (clients send it as "
            "`Authorization: Bearer <token>`), or bind 127.0.0.1"
        )
    return token


def default_model(params_path: str | None) -> str:
    """The registry (`schedule.registry`) once something is promoted there, else models/."""
    registry = (
        load_params(params_path).schedule.registry if params_path and Path(params_path).is_file() else None
    )
    if registry is not None and Path(registry).is_dir() and current_entry(Path(registry)) is not None:
        return registry
    return "models"


def api_command(args: argparse.Namespace) -> None:
    """`fuseline api`: load the model (refusals are one line), then serve until stopped."""
    import uvicorn

    settings = ApiSettings(
        model=args.model or default_model(args.params),
        params=args.params,
        roots=parse_roots(args.root),
        host=args.host,
        port=args.port,
        token=api_token(args.host),
        batch_wait_ms=args.batch_wait_ms,
        max_batch_rows=args.max_batch_rows,
        max_body_bytes=args.max_body_bytes,
    )
    if "OMP_NUM_THREADS" not in os.environ:
        use_all_cores()  # the encoders' forward on every usable core, as training's extraction runs it
    app = create_app(settings)
    print(f"serving {settings.model} on http://{settings.host}:{settings.port} (docs: /docs)")
    # http and loop "auto": httptools and uvloop, dependencies for this server (pyproject.toml)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
