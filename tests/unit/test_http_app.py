"""The HTTP layer in process (httpx ASGITransport, no network): operations routes, the simple API, the admin
API, error bodies and the OpenAPI document. A fake registry stands in for MLflow; the model is a real small
sklearn classifier wrapped in a LoadedModel, so predictions are real.

The helpers here (`make_app`, `FakeRegistry`, `small_model`) are shared with the other test_http_* modules.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sklearn.linear_model import LogisticRegression

from modelops.errors import ModelLoadError, NothingToRollBack, VersionNotFound
from modelops.registry import VersionInfo
from modelops.serving.http.app import create_app
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.service import ServingService
from modelops.settings import ServerSettings

pytestmark = pytest.mark.anyio
TOKEN = "unit-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAME = "m"
COLUMNS = ["a", "b", "c"]
ROW = [0.2, 0.4, 0.6]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@cache
def public_key() -> Path:
    """A signing public key: the app refuses to start without one (nothing is verified here)."""
    from modelops.signing import generate_keypair

    folder = Path(tempfile.mkdtemp(prefix="modelops-unit-keys-"))
    generate_keypair(folder / "key.pem", folder / "pub.pem")
    return folder / "pub.pem"


def small_model(version: str = "1", classes: list[Any] | None = None) -> LoadedModel:
    """A real LogisticRegression on 3 features; `classes` relabels its two classes (e.g. strings)."""
    rng = np.random.RandomState(0)
    x = rng.rand(60, 3)
    y = (x[:, 0] + x[:, 1] > 1).astype(int)
    labels = np.asarray(classes) if classes is not None else np.array([0, 1])
    clf = LogisticRegression().fit(x, labels[y])
    class_array = np.asarray(clf.classes_)

    def predict(rows: np.ndarray) -> Prediction:
        proba = clf.predict_proba(rows)
        return Prediction(class_array[proba.argmax(axis=1)], proba)

    return LoadedModel(
        name=NAME,
        version=version,
        run_id=f"run{version}",
        columns=list(COLUMNS),
        classes=class_array.tolist(),
        flavor="sklearn",
        predict_fn=predict,
        example=x[:2],
        metrics={"roc_auc": 0.9},
    )


def version_info(version: str) -> VersionInfo:
    return VersionInfo(NAME, version, f"run{version}", f"s3://b/{version}", (), {}, 0)


@dataclass
class FakeRegistry:
    """The Registry calls the server makes, in memory."""

    name: str = NAME
    alias: str = "champion"
    tracking_uri: str = "http://127.0.0.1:9"
    versions: dict[str, VersionInfo] = field(default_factory=lambda: {v: version_info(v) for v in "123"})
    holder: str | None = "1"
    history: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    moves: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    # shared by the copies for_alias makes: the other aliases' holders and the registered model's tags
    aliases: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    run_artifacts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    rollout_runs: dict[str, str | None] = field(default_factory=dict)  # run id -> how it finished
    run_events: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (put or finish, run id, path or status)
    writer: Any = field(default_factory=lambda: type("Writer", (), {"username": "operator"})())

    def for_alias(self, alias: str) -> FakeRegistry:
        return replace(self, alias=alias)

    def set_alias(self, version: str, *, action: str, why: str) -> None:
        self.moves.append((action, self.aliases.get(self.alias), version, why))
        self.aliases[self.alias] = version

    def model_tag(self, key: str) -> str | None:
        return self.tags.get(key)

    def set_model_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def put_run_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            self.run_artifacts[(run_id, path)] = data
            self.run_events.append(("put", run_id, path))

    def rollout_run(self, rollout_id: str, version: str) -> str:
        run_id = f"rollout-{rollout_id}-v{version}"
        self.rollout_runs.setdefault(run_id, None)
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        self.rollout_runs[run_id] = status
        self.run_events.append(("finish", run_id, status))

    def get_version(self, version: str) -> VersionInfo:
        self.calls.append(f"get_version {version}")
        if version not in self.versions:
            raise VersionNotFound(f"model {self.name!r} has no version {version!r}", field="version")
        return self.versions[version]

    def version_for_run(self, run_id: str) -> VersionInfo:
        self.calls.append(f"version_for_run {run_id}")
        found = [v for v in self.versions.values() if v.run_id == run_id]
        if not found:
            raise VersionNotFound(f"no run {run_id!r}", field="run_id")
        return found[0]

    def move_alias(self, version: str, *, action: str = "deploy", why: str = "") -> str | None:
        self.moves.append((action, self.holder, version, why))
        previous, self.holder = self.holder, version
        if previous is not None and previous != version:
            self.history.append(previous)
        return previous

    def previous_version(self) -> str:
        if not self.history:
            raise NothingToRollBack("nothing to roll back to")
        return self.history[-1]

    def rollback(self, why: str = "") -> tuple[str | None, str]:
        previous, self.holder = self.holder, self.history.pop()
        self.moves.append(("rollback", previous, self.holder, why))
        return previous, self.holder

    def list_versions(self, limit: int = 100) -> list[VersionInfo]:
        self.calls.append(f"list_versions {limit}")
        return sorted(self.versions.values(), key=lambda v: -int(v.version))[:limit]

    def alias_version(self) -> VersionInfo | None:
        if self.alias != "champion":
            return self.versions.get(self.aliases.get(self.alias, ""))
        return self.versions.get(self.holder or "")

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        return {}


def make_app(
    registry: FakeRegistry | None = None,
    model: LoadedModel | None = None,
    admin_token: str | None = TOKEN,
    **settings: Any,
) -> FastAPI:
    """The real app on a fake registry, serving `model` (none: not ready). Versions '1' and '2' load; '3'
    fails to load. The lifespan does not run: no watcher polls."""
    app = create_app(
        ServerSettings(
            model_name=NAME,
            signing_public_key_path=public_key(),
            admin_token=admin_token,
            versions_cache_s=60,
            **settings,
        ),
        registry=registry or FakeRegistry(),  # type: ignore[arg-type]
    )
    service = app_service(app)
    if model is not None:
        service.store.swap(model)

    async def load(version: VersionInfo) -> LoadedModel:
        if version.version == "3":
            raise ModelLoadError("warm-up of v3 failed")
        return small_model(version.version)

    service.watcher.load = load  # type: ignore[method-assign]
    return app


def app_service(app: FastAPI) -> ServingService:
    service: ServingService = app.state.service
    return service


@dataclass
class Client:
    app: FastAPI
    http: httpx.AsyncClient

    @property
    def service(self) -> ServingService:
        return app_service(self.app)

    async def post(self, url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None and "content" not in kwargs:
            kwargs["content"] = json.dumps(body)
        return await self.http.post(url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(url, **kwargs)


async def client_for(app: FastAPI) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield Client(app, http)
    service = app_service(app)
    await service.batcher.stop()
    service.registry_pool.shutdown(wait=False)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async for c in client_for(make_app(model=small_model())):
        yield c


@pytest.fixture
async def not_ready() -> AsyncIterator[Client]:
    async for c in client_for(make_app()):
        yield c


def request_count(endpoint: str, status: str) -> float:
    from modelops.serving import metrics

    return metrics.REQUESTS.labels(endpoint, "GET", status)._value.get()


def error(response: httpx.Response) -> dict[str, Any]:
    """Our error body: {"error": {"code", "message", "field"}}."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return dict(body["error"])


# -- operations ---------------------------------------------------------------------------------------------
async def test_health_readiness_and_metrics(client: Client, not_ready: Client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    waiting = await not_ready.get("/readyz")
    assert waiting.status_code == 503 and waiting.json() == {"status": "not ready", "reason": "starting"}
    detailed = await not_ready.get("/readyz", headers=AUTH)
    assert detailed.json()["detail"].startswith("starting")
    client.service.store.warning = "serving the last good version v1 from local disk: v2 is tampered"
    warned = (await client.get("/readyz")).json()
    assert warned["serving_warning"] == "serving the last good version v1 from local disk"
    assert "tampered" not in str(warned) and "tampered" in (await client.get("/readyz", headers=AUTH)).text
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain") and "modelops_requests" in metrics.text


async def test_every_response_carries_request_id_and_model_version(client: Client) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-Id": "req-42"})
    assert echoed.headers["x-request-id"] == "req-42" and echoed.headers["x-model-version"] == "1"
    made = await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32


# -- simple API -----------------------------------------------------------------------------------------------
async def test_predict_one_row_many_rows_and_named_rows(client: Client) -> None:
    model = small_model()
    expected = model.predict(np.array([ROW, [0.9, 0.9, 0.1]]))
    one = await client.post("/predict", {"features": ROW})
    assert one.status_code == 200, one.text
    assert one.json()["prediction"] == int(expected.labels[0]) and one.headers["x-model-version"] == "1"
    many = await client.post("/predict", {"instances": [ROW, {"c": 0.1, "b": 0.9, "a": 0.9}]})
    assert many.json()["predictions"] == expected.labels.tolist()
    assert np.allclose(many.json()["probabilities"], expected.probabilities)


@pytest.mark.parametrize(
    ("content", "status", "code", "field"),
    [
        (b'{"features": [1, 2', 400, "malformed_json", "body"),
        (b"[" * 10_000 + b"]" * 10_000, 400, "malformed_json", "body"),  # RecursionError before
        (b'{"features": {"\\ud800": 1}}', 400, "malformed_json", "body"),  # lone surrogate key
        (b'{"features": [0.1, 0.2, ' + b"9" * 5000 + b"]}", 422, "invalid_input", "features[2]"),
        (b'{"features": [0.1, 0.2, 1e400]}', 422, "invalid_input", "features[2]"),
        (b'{"features": [0.1, 0.2, NaN]}', 422, "invalid_input", "features[2]"),
        (b'{"features": [0.1, 0.2, true]}', 422, "invalid_input", "features[2]"),
        # nested past Python's recursion limit (orjson reads it): named, not a 500 from the error message's repr
        (
            b'{"features": [0.1, 0.2, ' + b"[" * 1000 + b"]" * 1000 + b"]}",
            422,
            "invalid_input",
            "features[2]",
        ),
        (
            b'{"instances": [[0.1, 0.2, ' + b"[" * 1000 + b"]" * 1000 + b"]]}",
            422,
            "invalid_input",
            "instances[0][2]",
        ),
        # UTF-16/32: no boolean check on the raw bytes would find `true`; JSON over HTTP is UTF-8 (the reviewer)
        ('{"features": [0.1, 0.2, true]}'.encode("utf-16"), 400, "malformed_json", "body"),
        ('{"instances": [{"a": 1, "b": 2, "c": false}]}'.encode("utf-32"), 400, "malformed_json", "body"),
        (
            b'\xef\xbb\xbf{"features": [0.1, 0.2, true]}',
            422,
            "invalid_input",
            "features[2]",
        ),  # a UTF-8 BOM: read
        (b'{"features": [0.1, 0.2]}', 422, "invalid_input", "features"),
        (b'{"features": {"a": 1, "b": 2}}', 422, "invalid_input", "features.c"),
        (b'{"features": {"a": 1, "b": 2, "c": 3, "d": 4}}', 422, "invalid_input", "features.d"),
        (b'{"instances": []}', 422, "invalid_input", "instances"),
        (b'{"instances": [[1, 2, 3], [1, 2]]}', 422, "invalid_input", "instances[1]"),
        (b'{"features": [1, 2, 3], "instances": [[1, 2, 3]]}', 422, "invalid_input", "body"),
        (b"[1, 2, 3]", 422, "invalid_input", "body"),
        (b'{"features": [1, 2, 3], "id": 5}', 422, "invalid_input", "id"),
        (b'{"instances": ' + json.dumps([ROW] * 11).encode() + b"}", 413, "payload_too_large", "instances"),
    ],
)
async def test_predict_errors_are_4xx_naming_the_field(
    content: bytes, status: int, code: str, field: str
) -> None:
    async for client in client_for(make_app(model=small_model(), max_request_rows=10)):
        response = await client.post("/predict", content=content)
        assert response.status_code == status, response.text
        assert error(response)["code"] == code and error(response)["field"] == field


async def test_body_limits_and_content_encoding() -> None:
    async for client in client_for(make_app(model=small_model(), max_body_bytes=1000)):
        huge = await client.post("/predict", content=b"[" + b"1," * 1000 + b"1]")
        assert huge.status_code == 413 and error(huge)["field"] == "body"
        for encoding in ("gzip", "deflate", "br"):
            zipped = await client.post(
                "/predict",
                content=gzip.compress(json.dumps({"features": ROW}).encode()),
                headers={"Content-Encoding": encoding},
            )
            assert zipped.status_code == 415 and error(zipped)["code"] == "unsupported_media_type"
        plain = await client.post("/predict", {"features": ROW}, headers={"Content-Encoding": "identity"})
        assert plain.status_code == 200


async def test_not_ready_is_503(not_ready: Client) -> None:
    response = await not_ready.post("/predict", {"features": ROW})
    assert response.status_code == 503 and error(response)["code"] == "model_not_ready"
    assert (await not_ready.get("/model")).status_code == 503


async def test_model_and_versions(client: Client) -> None:
    info = (await client.get("/model")).json()
    assert info["version"] == "1" and info["features"] == COLUMNS and info["alias"] == "champion"
    registry: FakeRegistry = client.service.registry  # type: ignore[assignment]
    first = (await client.get("/models/versions", params={"limit": 2})).json()
    assert [v["version"] for v in first["versions"]] == ["3", "2"] and first["served_version"] == "1"
    await client.get("/models/versions", params={"limit": 2})
    assert registry.calls.count("list_versions 2") == 1  # the second answer came from the cache
    for limit in ("0", "1001", "abc"):
        bad = await client.get("/models/versions", params={"limit": limit})
        assert bad.status_code == 422 and error(bad)["field"] == "limit", bad.text


async def test_routing_errors_use_our_body(client: Client) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404 and error(missing)["code"] == "not_found"
    wrong = await client.http.delete("/predict")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


async def test_an_unexpected_error_is_a_json_500_without_a_trace() -> None:
    def broken(_: np.ndarray) -> Prediction:
        raise RuntimeError("secret detail")

    model = small_model()
    model.predict_fn = broken
    async for client in client_for(make_app(model=model)):
        response = await client.post("/predict", {"features": ROW})
        assert response.status_code == 500 and "secret" not in response.text
        assert error(response)["code"] == "internal_error"
        v2 = await client.post(
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": ROW}]},
        )
        assert v2.status_code == 500 and v2.json() == {"error": "internal server error"}


async def test_an_unexpected_error_behind_fastapis_stack_is_the_same_json_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(model=small_model())

    def broken() -> dict[str, Any]:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app_service(app), "model_info", broken)
    before = request_count("/model", "500")
    async for client in client_for(app):
        response = await client.get("/model", headers={"x-request-id": "req-500"})
        assert response.status_code == 500 and "secret" not in response.text
        assert error(response)["code"] == "internal_error"
        assert response.headers["x-request-id"] == "req-500"  # the context layer still saw the answer
    assert request_count("/model", "500") == before + 1
    assert any("unhandled error on GET /model" in r.getMessage() for r in caplog.records)


async def test_a_client_that_leaves_mid_body_is_counted_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(model=small_model())
    messages = iter(
        [{"type": "http.request", "body": b'{"featu', "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": ""}  # fmt: skip
    before = {status: post_count(status) for status in ("499", "500")}
    await app(scope, receive, send)
    assert sent == []  # nobody to answer
    assert post_count("499") == before["499"] + 1 and post_count("500") == before["500"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def post_count(status: str) -> float:
    from modelops.serving import metrics

    return metrics.REQUESTS.labels("/predict", "POST", status)._value.get()


# -- admin ------------------------------------------------------------------------------------------------------
async def test_admin_needs_the_token(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.post("/deploy", {"version": "2"}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert error(response)["code"] == "unauthorized"
    assert (await client.post("/rollback")).status_code == 401


async def test_admin_is_disabled_without_a_token() -> None:
    async for client in client_for(make_app(model=small_model(), admin_token=None)):
        response = await client.post("/deploy", {"version": "2"}, headers=AUTH)
        assert response.status_code == 403 and "MODELOPS_ADMIN_TOKEN" in error(response)["message"]


async def test_deploy_by_version_and_run_then_rollback(client: Client) -> None:
    registry: FakeRegistry = client.service.registry  # type: ignore[assignment]
    deployed = await client.post("/deploy", {"version": "2"}, headers=AUTH)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["previous_version"] == "1" and deployed.headers["x-model-version"] == "2"
    assert registry.holder == "2" and client.service.store.require().version == "2"
    by_int = await client.post("/deploy", {"version": 1}, headers=AUTH)
    assert by_int.status_code == 200 and registry.holder == "1"
    by_run = await client.post("/deploy", params={"run_id": "run2"}, headers=AUTH)
    assert by_run.status_code == 200 and by_run.json()["version"] == "2"
    in_body = await client.post("/deploy", {"run_id": "run1"}, headers=AUTH)
    assert in_body.status_code == 200 and in_body.json()["version"] == "1"
    back = await client.post("/rollback", headers=AUTH)
    assert back.status_code == 200 and back.json()["version"] == "2" and registry.holder == "2"
    # every move is recorded for the audit trail, naming the admin API as the way it was made
    assert [m[0] for m in registry.moves] == ["deploy", "deploy", "deploy", "deploy", "rollback"]
    assert all("admin API" in m[3] for m in registry.moves)


async def test_a_version_that_cannot_load_never_gets_the_alias(client: Client) -> None:
    registry: FakeRegistry = client.service.registry  # type: ignore[assignment]
    refused = await client.post("/deploy", {"version": "3"}, headers=AUTH)
    assert refused.status_code == 422 and error(refused)["code"] == "model_load_failed"
    assert registry.holder == "1" and client.service.store.require().version == "1"


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"body": {}}, 422, "version"),
        ({"body": {"version": "2", "run_id": "run2"}}, 422, "version"),
        ({"body": {"version": "99"}}, 404, "version"),
        ({"body": {"version": "abc"}}, 422, "version"),
        ({"body": {"version": True}}, 422, "version"),
        ({"body": {"version": ["2"]}}, 422, "version"),
        ({"body": [1]}, 422, "body"),
        ({"body": {"run_id": "0" * 32}}, 404, "run_id"),
        ({"body": {"run_id": "x' OR name = 'y"}}, 422, "run_id"),  # never reaches a registry filter
        ({"params": {"run_id": "x' OR name = 'y"}}, 422, "run_id"),
        # a falsy body field is an answer, not a reason to look at the query
        ({"body": {"run_id": ""}, "params": {"run_id": "run2"}}, 422, "run_id"),
        ({"body": {"run_id": "run2"}, "params": {"run_id": "run2"}}, 422, "run_id"),
        ({"content": b"{bad json"}, 400, "body"),
    ],
)
async def test_deploy_refuses_bad_requests_before_touching_the_registry(
    client: Client, kwargs: dict[str, Any], status: int, field: str
) -> None:
    registry: FakeRegistry = client.service.registry  # type: ignore[assignment]
    response = await client.post(
        "/deploy", kwargs.get("body"), headers=AUTH, **_only(kwargs, "params", "content")
    )
    assert response.status_code == status, response.text
    assert error(response)["field"] == field
    assert registry.holder == "1"
    if status == 422:
        assert not [c for c in registry.calls if c.startswith("version_for_run")], registry.calls


def _only(kwargs: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in keys}


async def test_rollback_with_nothing_to_go_back_to_is_409(client: Client) -> None:
    response = await client.post("/rollback", headers=AUTH)
    assert response.status_code == 409 and error(response)["code"] == "nothing_to_roll_back"


# -- OpenAPI ------------------------------------------------------------------------------------------------
def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


async def test_openapi_document_is_valid_complete_and_resolvable(client: Client, not_ready: Client) -> None:
    from openapi_spec_validator import validate

    for c in (client, not_ready):
        document = (await c.get("/openapi.json")).json()
        validate(document)
        for ref in _refs(document):
            _resolve(document, ref)  # every $ref resolves from the root (no nested $defs)
        assert "$defs" not in json.dumps(document)
    paths = document["paths"]
    assert set(paths["/predict"]["post"]["responses"]) >= {"200", "400", "413", "415", "422", "503"}
    assert set(paths["/deploy"]["post"]["responses"]) >= {"200", "401", "403", "404", "409", "422"}
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert _resolve(document, infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]) == {
        "properties": {"error": {"title": "Error", "type": "string"}},
        "required": ["error"],
        "title": "V2Error",
        "type": "object",
        "description": "Errors of /v2 routes, as the Open Inference Protocol defines them.",
    }
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {
        "text/plain; version=0.0.4; charset=utf-8"
    }
    limit = next(p for p in paths["/models/versions"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["minimum"] == 1 and limit["schema"]["maximum"] == 1000
    assert paths["/deploy"]["post"]["security"] == [{"HTTPBearer": []}]


async def test_openapi_request_bodies_describe_the_served_model(client: Client) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    one_row = schemas["PredictRequest"]["oneOf"][0]["properties"]["features"]["anyOf"]
    assert one_row[0]["minItems"] == one_row[0]["maxItems"] == 3
    assert one_row[1]["required"] == COLUMNS
    tensor = schemas["V2InferRequest"]["properties"]["inputs"]["items"]
    assert tensor["properties"]["name"]["enum"] == ["input-0"]


async def test_a_number_just_past_float64s_bound_is_refused_and_the_bound_itself_is_not(
    client: Client,
) -> None:
    """The documented bound is 1.7976931348623157e308; an integer a hair above it (which the JSON parser rounds
    to the largest float) is not a number the model can get: 422 naming it, as for 1e999."""
    past = "17976931348623157" + "0" * 291 + "1"  # 309 digits: just over 17976931348623157 * 10**292
    body = ('{"features": [0.2, ' + past + ", 0.6]}").encode()
    refused = await client.post("/predict", content=body)
    assert refused.status_code == 422 and error(refused)["field"] == "features[1]", refused.text
    edge = await client.post("/predict", {"features": [0.2, 1.7976931348623157e308, 0.6]})
    assert edge.status_code == 200, edge.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[1, 2], [3, true]]}',
        b'{"features": [false, 1]}',
        b"true",
        b"[false]",
        b'{"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr": 1, "x": true}',  # past the hit limit: the plain search
        b'{"sssssssssssssssssssssssssssssssssssssssssssss": 1, "x": false}',
        # past the hit limit for "true" (many r's in keys), then "false" must still be looked for (the fuzzer)
        b'{"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr": 1, "x": false}',
        b'{"parameters": {"a": 1}, "inputs": [{"data": [1, 2, true]}]}',
    ],
)
def test_a_json_boolean_anywhere_is_found(raw: bytes) -> None:
    from modelops.serving.schemas import has_json_bool

    assert has_json_bool(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"instances": [[1.5, 2e-05], [3, 4]]}',
        b'{"features": {"mean radius": 1, "worst texture": 2}}',
        b"",
        b"rs",
        b'{"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}',
    ],
)
def test_a_body_without_booleans_is_not_strict(raw: bytes) -> None:
    from modelops.serving.schemas import has_json_bool

    assert not has_json_bool(raw)
