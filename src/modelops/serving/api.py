"""HTTP API of the model server. Routes are thin: parse, call the store/batcher/registry, render.

Only this module imports FastAPI. Errors are domain errors mapped to HTTP in ERROR_STATUS.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelops import __version__
from modelops.errors import (
    AliasNotFound,
    ConfigError,
    InvalidInput,
    ModelError,
    ModelLoadError,
    ModelNotReady,
    ModelOpsError,
    NothingToRollBack,
    PayloadTooLarge,
    RegistryError,
    RegistryForbidden,
    RegistryUnavailable,
    VersionNotFound,
)
from modelops.registry import Registry
from modelops.serving import metrics
from modelops.serving.batching import MicroBatcher
from modelops.serving.schemas import (
    DeployRequest,
    PredictRequest,
    PredictResponse,
    V2InferRequest,
    parse_predict,
    parse_v2_infer,
    predict_response,
    v2_response,
)
from modelops.serving.store import ModelStore
from modelops.serving.watcher import AliasWatcher
from modelops.settings import ServerSettings
from modelops.signing import Verifier

log = logging.getLogger(__name__)

# The one table from domain errors to HTTP status codes (most specific first).
ERROR_STATUS: list[tuple[type[ModelOpsError], int]] = [
    (PayloadTooLarge, 413),
    (InvalidInput, 422),
    (VersionNotFound, 404),
    (NothingToRollBack, 409),
    (AliasNotFound, 503),
    (RegistryUnavailable, 503),
    (RegistryForbidden, 403),
    (RegistryError, 502),
    (ModelNotReady, 503),
    (ModelLoadError, 422),
    (ModelError, 500),
    (ConfigError, 500),
]
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]
T = TypeVar("T")


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=ORJSON_OPTIONS), status, headers, media_type="application/json"
    )


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def status_for(exc: ModelOpsError) -> int:
    return next((status for kind, status in ERROR_STATUS if isinstance(exc, kind)), 500)


class RequestContext:
    """Pure ASGI middleware: request id, X-Model-Version, metrics, and no stack trace ever leaks."""

    def __init__(self, app: ASGIApp, store: ModelStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        if not REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex.encode()
        status = 500
        started = False

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = list(message.get("headers", []))
                if not any(k == b"x-model-version" for k, _ in headers):
                    model = self.store.current
                    headers.append((b"x-model-version", model.version.encode() if model else b""))
                headers.append((b"x-request-id", request_id))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = orjson.dumps(error_body("internal_error", "internal server error"))
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics.REQUESTS.labels(endpoint, scope.get("method", ""), str(status)).inc()
            metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - start)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


class BadJSON(Exception):
    """Malformed JSON: answered with 400."""


def load_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Python's json (and so many clients) writes NaN/Infinity, and 1e999 overflows to inf: parse
        # those leniently so the validator can name the non-finite field (422), not call it malformed.
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadJSON(f"malformed JSON: {exc}") from None


def _openapi_body(model: type[Any], required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class AnswerCache:
    """Rendered answers by key for `ttl_s` seconds, each valid only for the `owner` it was made for (e.g. the
    served model). Concurrent misses on one key share one computation, so a burst costs one registry call."""

    def __init__(self, ttl_s: float, max_keys: int = 64) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._answers: dict[Hashable, tuple[float, Hashable, bytes]] = {}
        self._pending: dict[Hashable, tuple[Hashable, asyncio.Future[bytes]]] = {}

    async def get(self, key: Hashable, owner: Hashable, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        hit = self._answers.get(key)
        if hit is not None and hit[1] == owner and hit[0] > time.monotonic():
            return hit[2]
        pending = self._pending.get(key)
        if pending is None or pending[0] != owner:
            pending = self._pending[key] = (owner, asyncio.ensure_future(self._compute(key, owner, compute)))
        # shield: a client that disconnects must not cancel the call the others wait for
        return await asyncio.shield(pending[1])

    async def _compute(
        self, key: Hashable, owner: Hashable, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        try:
            answer = await compute()
            if self.ttl_s > 0:
                if len(self._answers) >= self.max_keys:
                    self._answers.clear()
                self._answers[key] = (time.monotonic() + self.ttl_s, owner, answer)
            return answer
        finally:
            pending = self._pending.get(key)
            if pending is not None and pending[1] is asyncio.current_task():
                del self._pending[key]


def create_app(settings: ServerSettings, registry: Registry | None = None) -> FastAPI:
    """Build the model server app. The watcher and batcher start with the app's lifespan."""
    verifier = Verifier.from_path(settings.signing_public_key_path)
    registry = registry or Registry(
        settings,
        write_username=settings.registry_write_username,
        write_password=settings.registry_write_password,
    )
    if settings.model_dir is not None:
        settings.model_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore()
    watcher = AliasWatcher(
        store,
        registry,
        settings.poll_interval_s,
        settings.poll_backoff_max_s,
        verifier,
        settings.model_dir,
        settings.allow_pyfunc_models,
    )
    batcher = MicroBatcher(
        settings.max_batch_rows, settings.max_batch_wait_ms, settings.inline_predict_max_rows
    )
    admin_token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None
    # Registry calls made by handlers run on their own small pool: a slow MLflow then queues them, never the
    # predictions, whose threads are the default executor's.
    registry_pool = ThreadPoolExecutor(settings.registry_threads, thread_name_prefix="registry")
    versions_cache = AnswerCache(settings.versions_cache_s)

    async def registry_call(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(registry_pool, fn, *args)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import sklearn

        # Inputs are validated (finite, right shape) before they reach the model.
        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
        metrics.MODEL_LOADED.set(0)
        watcher.start()
        batcher.start()
        yield
        await watcher.stop()
        await batcher.stop()
        registry_pool.shutdown(wait=False, cancel_futures=True)
        if store.current is not None:
            store.current.release()

    app = FastAPI(
        title="ModelOps Stack model server",
        version=__version__,
        description=f"Serves the `{settings.model_alias}` alias of `{settings.model_name}` from the MLflow registry.",
        lifespan=lifespan,
    )
    app.state.store, app.state.watcher, app.state.registry, app.state.batcher = (
        store,
        watcher,
        registry,
        batcher,
    )

    # -- errors -------------------------------------------------------------------------------------
    @app.exception_handler(ModelOpsError)
    async def domain_error(_: Request, exc: ModelOpsError) -> Response:
        return json_response(error_body(exc.code, exc.message, exc.field), status_for(exc))

    @app.exception_handler(BadJSON)
    async def bad_json(_: Request, exc: BadJSON) -> Response:
        return json_response(error_body("malformed_json", str(exc), "body"), 400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        if first.get("type") == "json_invalid":
            return json_response(error_body("malformed_json", "malformed JSON", "body"), 400)
        field = ".".join(loc) or "body"
        return json_response(
            error_body("invalid_input", f"{field}: {first.get('msg', 'invalid')}", field), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(
            error_body(code, str(exc.detail)), exc.status_code, getattr(exc, "headers", None)
        )

    # -- health -------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> Response:
        return json_response({"status": "alive"})

    def public_reason(detail: str) -> str:
        """A short reason anyone may read: one of a few fixed phrases, never the detail's URLs, file paths or
        exception text (the detail is in the log, and in /readyz for the admin token)."""
        text = detail.lower()
        if text.startswith("starting"):
            return "starting"
        if text.startswith("loading"):
            return "loading model"
        if "holds alias" in text:
            return f"no version holds alias {settings.model_alias}"
        if "not reachable" in text or "not healthy" in text:
            return "waiting for the registry (not reachable)"
        if "refused the registry" in text or text.startswith("mlflow refused"):
            return "waiting for the registry (credentials refused)"
        if text.startswith("registry call failed"):
            return "waiting for the registry (error)"
        return "the version the alias points to cannot be served"

    def has_admin_token(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return (
            admin_token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), admin_token)
        )

    def readiness(detail: bool = False) -> tuple[bool, dict[str, Any]]:
        """Whether a model serves and, if not, a short reason; `detail` adds the full text for operators."""
        model = store.current
        if model is None:
            body: dict[str, Any] = {"status": "not ready", "reason": public_reason(store.reason)}
            if detail:
                body["detail"] = store.reason
            return False, body
        body = {
            "status": "ready",
            "model_name": model.name,
            "model_version": model.version,
            "run_id": model.run_id,
            "alias": settings.model_alias,
        }
        if watcher.last_error:  # serving on; the registry is unwell
            body["registry_warning"] = public_reason(watcher.last_error)
            if detail:
                body["registry_detail"] = watcher.last_error
        return True, body

    @app.get("/readyz", tags=["health"], summary="Readiness: a model is loaded and warmed")
    async def readyz(request: Request) -> Response:
        ready, body = readiness(detail=has_admin_token(request))
        return json_response(body, 200 if ready else 503)

    # -- predictions --------------------------------------------------------------------------------
    @app.post(
        "/predict",
        tags=["predict"],
        response_model=PredictResponse,
        openapi_extra=_openapi_body(PredictRequest),
        summary="Predict one row or many",
    )
    async def predict(request: Request) -> Response:
        with batcher.arriving_request():
            raw = await read_body(request, settings.max_body_bytes)
            body = load_json(raw)
            model = store.require()
            x, single = parse_predict(body, model, settings.max_request_rows, raw)
        result = await batcher.predict(model, x)
        return json_response(
            predict_response(model, result, single), headers={"x-model-version": model.version}
        )

    # -- Open Inference Protocol v2 -------------------------------------------------------------------
    def v2_model_meta() -> dict[str, Any]:
        model = store.require()
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": f"mlflow-{model.flavor}",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, model.n_features]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
            + (
                [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes or [])]}]
                if model.classes
                else []
            ),
        }

    def check_name(name: str, version: str | None = None) -> None:
        model = store.require()
        if name != model.name:
            raise VersionNotFound(
                f"model {name!r} is not served here; this server serves {model.name!r}", field="name"
            )
        if version is not None and version != model.version:
            raise VersionNotFound(
                f"version {version!r} of {name!r} is not loaded; this server serves v{model.version}",
                field="version",
            )

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_server() -> Response:
        return json_response({"name": "modelops-model-server", "version": __version__, "extensions": []})

    @app.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["v2"])
    async def v2_ready() -> Response:
        ready, _ = readiness()
        return json_response({"ready": ready}, 200 if ready else 503)

    @app.get("/v2/models/{name}", tags=["v2"])
    async def v2_model(name: str) -> Response:
        check_name(name)
        return json_response(v2_model_meta())

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def v2_model_ready(name: str) -> Response:
        check_name(name)
        return json_response({"name": name, "ready": True})

    async def infer(request: Request, name: str, version: str | None) -> Response:
        with batcher.arriving_request():
            raw = await read_body(request, settings.max_body_bytes)
            body = load_json(raw)
            check_name(name, version)
            model = store.require()
            x, request_id, wanted = parse_v2_infer(body, model, settings.max_request_rows)
        result = await batcher.predict(model, x)
        return json_response(
            v2_response(model, result, request_id, wanted), headers={"x-model-version": model.version}
        )

    @app.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra=_openapi_body(V2InferRequest))
    async def v2_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["v2"], openapi_extra=_openapi_body(V2InferRequest)
    )
    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    # -- model info -----------------------------------------------------------------------------------
    @app.get("/model", tags=["model"], summary="The loaded version, its run, metrics and signature")
    async def model_info() -> Response:
        return json_response({**store.require().info(), "alias": settings.model_alias})

    @app.get("/models/versions", tags=["model"], summary="Registry versions, newest first")
    async def model_versions(limit: int = 50) -> Response:
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", field="limit")
        model = store.current
        served = model.version if model else None

        async def compute() -> bytes:
            versions = await registry_call(registry.list_versions, limit)
            body = {
                "model_name": registry.name,
                "alias": registry.alias,
                "served_version": served,
                "versions": [v.to_dict() for v in versions],
            }
            return orjson.dumps(body, option=ORJSON_OPTIONS)

        # The answer names the served version: a swap (this process deployed, rolled back or followed the
        # alias) makes a new one. Other replicas' alias moves show within versions_cache_s.
        owner = (id(model), served, model.loaded_at) if model else None
        answer = await versions_cache.get(limit, owner, compute)
        return Response(answer, media_type="application/json")

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- admin ----------------------------------------------------------------------------------------
    def authorize(request: Request) -> Response | None:
        if admin_token is None:
            return json_response(
                error_body(
                    "admin_disabled",
                    "the admin API is disabled: set MODELOPS_ADMIN_TOKEN on the server to enable it",
                ),
                403,
            )
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token):
            return json_response(
                error_body("unauthorized", "missing or wrong bearer token", "Authorization"),
                401,
                {"www-authenticate": "Bearer"},
            )
        return None

    async def serve_and_move(version: str, action: str, move_alias: Callable[[], object]) -> Response:
        target = await registry_call(registry.get_version, version)
        previous = store.current.version if store.current else None
        # Load and warm here first: the alias moves only once the version serves, so a version that
        # cannot load never gets it.
        model = await watcher.serve_version(target, move_alias)
        return json_response(
            {
                "action": action,
                "model_name": model.name,
                "alias": settings.model_alias,
                "previous_version": previous,
                "version": model.version,
                "run_id": model.run_id,
            },
            headers={"x-model-version": model.version},
        )

    @app.post(
        "/deploy",
        tags=["admin"],
        summary="Move the alias to a version or run (every replica follows)",
        openapi_extra=_openapi_body(DeployRequest, required=False),
    )
    async def deploy(request: Request, run_id: str | None = None) -> Response:
        if (denied := authorize(request)) is not None:
            return denied
        raw = await read_body(request, settings.max_body_bytes)
        body = load_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object", field="body")
        version, run = body.get("version"), body.get("run_id") or run_id
        for field, value in (("version", version), ("run_id", run)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise InvalidInput(f"{field} must be a string", field=field)
        if (version is None) == (run is None):
            raise InvalidInput("send exactly one of 'version' or 'run_id'", field="version")
        if run is not None:
            version = (await registry_call(registry.version_for_run, str(run))).version
        return await serve_and_move(str(version), "deploy", lambda: registry.move_alias(str(version)))

    @app.post("/rollback", tags=["admin"], summary="Move the alias back to its previous holder")
    async def rollback(request: Request) -> Response:
        if (denied := authorize(request)) is not None:
            return denied
        target = await registry_call(registry.previous_version)
        return await serve_and_move(target, "rollback", registry.rollback)

    app.add_middleware(RequestContext, store=store)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings from the environment."""
    return create_app(ServerSettings())
