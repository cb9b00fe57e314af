"""The REST reader a model server uses instead of MLflow's client, against a scripted server on loopback: how it
classifies MLflow's failures, retries, authenticates, and refuses what an artifact proxy must not make it do."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelops import mlflow_rest
from modelops.errors import ConfigError
from modelops.mlflow_rest import NotThisProxy, RestError, RestReader, Transport
from modelops.registry import classify
from tests.support import free_port

Answer = tuple[int, Any]  # status, JSON body (bytes: sent as they are; Truncated: cut off mid-body)


class Truncated(bytes):
    """A body whose Content-Length promises more than is sent before the connection closes."""


class Scripted:
    """A loopback HTTP server answering each request with `answer(method, path)`; it records what it got."""

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, body = answer(self.command, self.path)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Length", str(len(data) + (100 if isinstance(body, Truncated) else 0))
                )
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.end_headers()
                self.wfile.write(data)
                if isinstance(body, Truncated):
                    self.close_connection = True

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def reader(self, **kwargs: Any) -> RestReader:
        return RestReader(Transport(self.uri, backoff_s=0.01, **kwargs))


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[str, str], Answer]], Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Callable[[str, str], Answer]) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def error_of(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such version"}, "missing"),
        (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "alias not found"}, "invalid"),
        (403, {"error_code": "PERMISSION_DENIED", "message": "no"}, "forbidden"),
        (401, b"You are not authenticated.", "forbidden"),  # the auth app's plain-text answer
        (403, b"Permission denied", "forbidden"),
        (400, b"<html>bad</html>", "invalid"),  # MLflow's client: BAD_REQUEST
        (
            404,
            b"<html>no such page</html>",
            "other",
        ),  # ENDPOINT_NOT_FOUND: a wrong URL, not a missing version
        (502, b"bad gateway", "other"),
    ],
)
def test_mlflow_errors_are_classified_as_mlflow_clients_errors_are(
    scripted: Callable[..., Scripted], status: int, body: Any, kind: str
) -> None:
    server = scripted(lambda method, path: (status, body))
    exc = error_of(lambda: server.reader(retries=0).get_model_version("m", "1"))
    assert isinstance(exc, RestError)
    assert classify(exc) == kind
    assert str(status) in str(exc)


def test_a_server_that_is_not_listening_is_unreachable() -> None:
    reader = RestReader(Transport(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01))
    exc = error_of(lambda: reader.get_registered_model("m"))
    assert isinstance(exc, ConnectionError)
    assert classify(exc) == "unreachable"


def test_busy_answers_are_retried_then_the_answer_is_read(scripted: Callable[..., Scripted]) -> None:
    answers = iter([(503, b"busy"), (429, b"slow down")])
    version = {"name": "m", "version": "3", "run_id": "r", "source": "s", "aliases": ["champion"],
               "tags": [{"key": "k", "value": "v"}], "creation_timestamp": 5}  # fmt: skip
    server = scripted(lambda method, path: next(answers, (200, {"model_version": version})))
    found = server.reader(retries=2).get_model_version("m", "3")
    assert (found.version, found.aliases, found.tags, found.creation_timestamp) == (
        "3",
        ["champion"],
        {"k": "v"},
        5,
    )
    assert len(server.requests) == 3
    # with fewer retries than busy answers, the last busy answer is the error
    answers = iter([(503, b"busy"), (503, b"busy")])
    exc = error_of(lambda: server.reader(retries=1).get_model_version("m", "3"))
    assert isinstance(exc, RestError) and exc.status == 503


def test_basic_credentials_win_over_a_token_and_a_token_is_sent_without_them(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123")
    server = scripted(
        lambda method, path: (200, {"registered_model": {"name": "m", "aliases": [], "tags": []}})
    )
    server.reader(username="model-server", password="pw").get_registered_model("m")
    server.reader().get_registered_model("m")
    first, second = (headers.get("Authorization", "") for _, _, headers in server.requests)
    assert first.startswith("Basic ") and second == "Bearer tok-123"


def listing(
    files: dict[str, list[dict[str, Any]]], contents: dict[str, bytes]
) -> Callable[[str, str], Answer]:
    """A scripted artifact proxy: `files` maps a listed path to its entries, `contents` a file path to bytes."""
    from urllib.parse import parse_qs, unquote, urlsplit

    def answer(method: str, raw: str) -> Answer:
        url = urlsplit(raw)
        if url.path == "/api/2.0/mlflow-artifacts/artifacts":
            return 200, {"files": files.get(parse_qs(url.query)["path"][0], [])}
        name = unquote(url.path.removeprefix("/api/2.0/mlflow-artifacts/artifacts/"))
        return (200, contents[name]) if name in contents else (404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})

    return answer


def test_a_folder_is_downloaded_with_its_subfolders(
    scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    server = scripted(
        listing(
            {
                "1/run/artifacts/model": [
                    {"path": "MLmodel", "is_dir": False},
                    {"path": "sub", "is_dir": True},
                ],
                "1/run/artifacts/model/sub": [{"path": "weights.bin", "is_dir": False}],
            },
            {
                "1/run/artifacts/model/MLmodel": b"flavors: {}",
                "1/run/artifacts/model/sub/weights.bin": b"\x00" * 3,
            },
        )
    )
    local = server.reader().download("mlflow-artifacts:/1/run/artifacts/model", tmp_path)
    assert local == tmp_path / "model"
    assert (local / "MLmodel").read_bytes() == b"flavors: {}"
    assert (local / "sub" / "weights.bin").read_bytes() == b"\x00\x00\x00"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", "..\\escape"])
def test_a_listed_name_that_is_not_a_plain_name_is_refused(
    scripted: Callable[..., Scripted], tmp_path: Path, name: str
) -> None:
    server = scripted(listing({"1/model": [{"path": name, "is_dir": False}]}, {f"1/{name}": b"owned"}))
    exc = error_of(lambda: server.reader().download("mlflow-artifacts:/1/model", tmp_path / "in"))
    assert isinstance(exc, RestError) and repr(name) in str(exc)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "in" / "escape").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "mlflow-artifacts://evil.example:443/1/model",  # another server: never contacted
        "s3://bucket/1/model",  # not through the proxy
        "mlflow-artifacts:/1/../../etc",
        "mlflow-artifacts:/",
    ],
)
def test_uris_outside_this_servers_artifact_proxy_are_refused_without_a_request(
    scripted: Callable[..., Scripted], tmp_path: Path, uri: str
) -> None:
    server = scripted(listing({}, {}))
    exc = error_of(lambda: server.reader().download(uri, tmp_path))
    assert isinstance(exc, NotThisProxy) and classify(exc) == "invalid"
    assert server.requests == []


def test_a_folder_with_more_files_than_the_limit_is_refused(
    scripted: Callable[..., Scripted], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow_rest, "MAX_FILES", 2)
    entries = [{"path": f"f{i}", "is_dir": False} for i in range(3)]
    server = scripted(listing({"1/model": entries}, {f"1/model/f{i}": b"x" for i in range(3)}))
    exc = error_of(lambda: server.reader().download("mlflow-artifacts:/1/model", tmp_path))
    assert "more than 2 files" in str(exc)


def test_a_redirect_is_an_error_and_is_not_followed(
    scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    server = scripted(lambda method, path: (302, b""))
    exc = error_of(lambda: server.reader().get_registered_model("m"))
    assert isinstance(exc, RestError) and exc.error_code == "REDIRECT_NOT_FOLLOWED"
    assert "127.0.0.1:9/elsewhere" in str(exc)
    assert len(server.requests) == 1


def test_a_listing_of_the_file_itself_downloads_that_file(
    scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    server = scripted(
        listing({"1/card.json": [{"path": "card.json", "is_dir": False}]}, {"1/card.json": b"{}"})
    )
    local = server.reader().download("mlflow-artifacts:/1/card.json", tmp_path)
    assert local.read_bytes() == b"{}"


def test_a_download_larger_than_the_limit_stops(
    scripted: Callable[..., Scripted], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow_rest, "MAX_DOWNLOAD_BYTES", 10)
    entries = [{"path": "a", "is_dir": False}, {"path": "b", "is_dir": False}]
    server = scripted(listing({"1/m": entries}, {"1/m/a": b"x" * 6, "1/m/b": b"y" * 6}))
    exc = error_of(lambda: server.reader().download("mlflow-artifacts:/1/m", tmp_path))
    assert "larger than 10 bytes" in str(exc)


def test_an_api_answer_larger_than_the_limit_is_refused(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow_rest, "MAX_JSON_BYTES", 100)
    server = scripted(lambda method, path: (200, {"registered_model": {"name": "m" * 200}}))
    assert "over 100 bytes" in str(error_of(lambda: server.reader().get_registered_model("m")))


def test_an_answer_cut_off_mid_body_is_unreachable(scripted: Callable[..., Scripted], tmp_path: Path) -> None:
    server = scripted(listing({"1/m": [{"path": "a", "is_dir": False}]}, {"1/m/a": Truncated(b"partial")}))
    exc = error_of(lambda: server.reader(retries=0).download("mlflow-artifacts:/1/m", tmp_path))
    assert isinstance(exc, ConnectionError) and classify(exc) == "unreachable"


def run_answer(artifact_uri: str) -> Callable[[str, str], Answer]:
    inner = listing(
        {"1/r/artifacts/model": [{"path": "MLmodel", "is_dir": False}]}, {"1/r/artifacts/model/MLmodel": b"m"}
    )

    def answer(method: str, path: str) -> Answer:
        if path.startswith("/api/2.0/mlflow/runs/get"):
            return 200, {"run": {"info": {"run_id": "r", "artifact_uri": artifact_uri}, "data": {}}}
        return inner(method, path)

    return answer


def test_a_runs_uri_is_resolved_through_this_server_and_never_leaves_it(
    scripted: Callable[..., Scripted], tmp_path: Path
) -> None:
    from modelops.registry import Registry
    from modelops.settings import RegistrySettings

    good = scripted(run_answer("mlflow-artifacts:/1/r/artifacts"))
    registry = Registry(RegistrySettings(tracking_uri=good.uri, model_name="m"))
    assert (registry.download("runs:/r/model", tmp_path / "a") / "MLmodel").read_bytes() == b"m"
    # a run whose artifacts are elsewhere: refused after the run was read, before anything is fetched from there
    for elsewhere in (
        "https://evil.example/x",
        "mlflow-artifacts://evil.example/1/r/artifacts",
        "s3://b/1/r",
    ):
        hostile = scripted(run_answer(elsewhere))
        registry = Registry(RegistrySettings(tracking_uri=hostile.uri, model_name="m"))
        exc = error_of(lambda registry=registry: registry.download("runs:/r/model", tmp_path / "b"))  # type: ignore[misc]
        assert isinstance(exc, NotThisProxy), exc
        assert [path.split("?")[0] for _, path, _ in hostile.requests] == ["/api/2.0/mlflow/runs/get"]


def test_settings_mlflows_client_would_refuse_or_cannot_honour_stop_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/nonexistent.pem")
    with pytest.raises(ConfigError, match="both set"):
        Transport("https://127.0.0.1:1")
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "maybe")
    with pytest.raises(ConfigError, match="expected true or false"):
        Transport("https://127.0.0.1:1")
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "some_plugin")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_AUTH"):
        Transport("http://127.0.0.1:1")


def test_the_workspace_is_sent_as_mlflows_client_sends_it(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-a")
    server = scripted(lambda method, path: (200, {"registered_model": {"name": "m"}}))
    server.reader().get_registered_model("m")
    assert server.requests[0][2].get("X-MLFLOW-WORKSPACE") == "team-a"
