"""Server limits against a real `modelops serve` process on 127.0.0.1: idle and half-open connections cannot
lock clients out, a slow request head is cut at its deadline, /models/versions costs a bounded number of MLflow
calls, and /readyz tells strangers only a short reason.

Deadlines come from the settings the servers run with; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import http.client
import re
import resource
import selectors
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import ADMIN_TOKEN
from tests.support import Service, free_port, principal_env, serve_argv, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIMIT = 100  # MODELOPS_MAX_CONCURRENT_CONNECTIONS of the limits server
HEADER_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 8192
FLOOD = 2000  # idle connections, far above LIMIT and above the soft open files limit the server starts with
SERVER_SOFT_NOFILE = 512
SLACK_S = 30.0  # added to every deadline: a busy 2-core machine may be slow, never wrong


def public_key(folder: Path) -> Path:
    """A signing public key: the server refuses to start without one (it never has to verify here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = folder / "signing.pub.pem"
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def start_server(folder: Path, tracking_uri: str, model_name: str, env: dict[str, str]) -> Service:
    """`modelops serve` started with a low soft open files limit (it must raise it to the hard limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["sh", "-c", f'ulimit -Sn {SERVER_SOFT_NOFILE} && exec "$0" "$@"', *serve_argv(port)]
    service = Service(
        f"server-{port}",
        argv,
        f"http://127.0.0.1:{port}/healthz",
        folder,
        env={
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MODELOPS_MODEL_NAME": model_name,
            "MODELOPS_ADMIN_TOKEN": ADMIN_TOKEN,
            "MODELOPS_SIGNING_PUBLIC_KEY_PATH": str(public_key(folder)),
            "MODELOPS_MODEL_DIR": str(folder / "models"),
            **env,
        },
    )
    service.uri = f"http://127.0.0.1:{port}"
    service.port = port  # type: ignore[attr-defined]
    return service.start()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A server with a small connection limit and head deadline; its MLflow is unreachable (never ready)."""
    server = start_server(
        tmp_path_factory.mktemp("limited"),
        f"http://127.0.0.1:{free_port()}",
        "unreachable-model",
        {
            "MODELOPS_MAX_CONCURRENT_CONNECTIONS": str(LIMIT),
            "MODELOPS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "MODELOPS_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "MODELOPS_POLL_INTERVAL_S": "1",
            "MODELOPS_POLL_BACKOFF_MAX_S": "2",
        },
    )
    yield server
    server.stop()


def url(server: Service) -> str:
    return server.uri  # type: ignore[attr-defined,no-any-return]


def wait_closed_by_server(socks: list[socket.socket], timeout_s: float, at_least: int | None = None) -> int:
    """Wait until the server closed every socket, or `at_least` of them (EOF or reset); returns how many it
    closed in time."""
    at_least = len(socks) if at_least is None else at_least
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout_s
    while closed < at_least and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                data = ready.recv(65536)
            except BlockingIOError:
                continue
            except OSError:  # reset: closed with our bytes unread
                data = b""
            if not data:
                selector.unregister(ready)
                closed += 1
    selector.close()
    return closed


def assert_public(response: httpx.Response) -> None:
    """A body anyone may read: no URL, address, path or exception text."""
    text = response.text
    assert "http://" not in text and "https://" not in text, text
    assert "127.0.0.1" not in text and "/" not in text, text
    assert not re.search(r"[A-Za-z]+(Error|Exception)\b", text), text
    assert "Errno" not in text and "Traceback" not in text, text


# -- process limits --------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_open_files_soft_limit_is_raised_to_the_hard_limit(limited: Service) -> None:
    assert limited.proc is not None
    line = next(
        x for x in Path(f"/proc/{limited.proc.pid}/limits").read_text().splitlines() if "open files" in x
    )
    soft, hard = line.split()[3:5]
    assert soft == hard and (hard == "unlimited" or int(hard) > SERVER_SOFT_NOFILE), line


# -- readiness -------------------------------------------------------------------------------------------
def test_readyz_gives_strangers_a_short_reason_and_the_admin_the_detail(limited: Service) -> None:
    base = url(limited)
    wait_for(
        lambda: "registry" in httpx.get(f"{base}/readyz", timeout=10).json()["reason"],
        HEADER_TIMEOUT_S + SLACK_S,
        "a failed poll of the unreachable registry",
    )
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        response = httpx.get(f"{base}/readyz", headers=headers, timeout=10)
        assert response.status_code == 503
        assert response.json() == {
            "status": "not ready",
            "reason": "waiting for the registry (not reachable)",
        }
        assert_public(response)
    admin = httpx.get(f"{base}/readyz", headers=AUTH, timeout=10).json()
    assert admin["reason"] == "waiting for the registry (not reachable)"
    assert "http://127.0.0.1:" in admin["detail"]  # the operator sees which URL failed, and how


# -- connections -----------------------------------------------------------------------------------------
def test_thousands_of_idle_connections_do_not_lock_clients_out(limited: Service) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 400:
        pytest.skip(f"needs an open files hard limit of {FLOOD + 400}, have {hard}")
    if soft != resource.RLIM_INFINITY and soft < FLOOD + 400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FLOOD + 400, hard))
    socks: list[socket.socket] = []
    try:
        # Half-open clients: connect, send nothing. More than the server's connection limit, and more than
        # the soft open files limit it started with.
        for _ in range(FLOOD):
            socks.append(socket.create_connection(("127.0.0.1", limited.port), timeout=SLACK_S))  # type: ignore[attr-defined]
        # A normal client is answered at once: 200, or a clean 503 while every connection is young; never
        # a refused, reset or hanging connection.
        first = httpx.get(f"{url(limited)}/healthz", timeout=SLACK_S)
        assert first.status_code in (200, 503), first.text
        if first.status_code == 503:
            assert first.headers["connection"] == "close"
        # Connections idle for a second make room for it.
        wait_for(
            lambda: httpx.get(f"{url(limited)}/healthz", timeout=SLACK_S).status_code == 200,
            SLACK_S,
            "a 200 while the idle connections are open",
        )
        # The server has closed every idle connection by the head deadline (the rest were closed for room).
        assert wait_closed_by_server(socks, HEADER_TIMEOUT_S + SLACK_S) == FLOOD
        assert httpx.get(f"{url(limited)}/healthz", timeout=SLACK_S).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_idle_keep_alive_connections_make_room_for_new_clients(limited: Service) -> None:
    conns: list[http.client.HTTPConnection] = []
    try:
        # As many as the limit allows (uvicorn counts the connection asking too), kept alive after one answer
        for _ in range(LIMIT - 1):
            conn = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=SLACK_S)  # type: ignore[attr-defined]
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"alive"}'
            conns.append(conn)
        wait_for(
            lambda: httpx.get(f"{url(limited)}/healthz", timeout=SLACK_S).status_code == 200,
            SLACK_S,
            "a 200 while the limit is held by idle keep-alive connections",
        )
        # The youngest kept-alive connection still serves; the oldest ones were closed to make room.
        conns[-1].request("GET", "/healthz")
        assert conns[-1].getresponse().status == 200
        socks = [c.sock for c in conns[:-1] if c.sock is not None]
        assert wait_closed_by_server(socks, SLACK_S, at_least=1) >= 1
    finally:
        for conn in conns:
            conn.close()


def test_a_slow_request_head_is_cut_at_the_header_timeout(limited: Service) -> None:
    start = time.monotonic()
    slow = socket.create_connection(("127.0.0.1", limited.port), timeout=0.3)  # type: ignore[attr-defined]
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        received = None
        while received is None and time.monotonic() - start < HEADER_TIMEOUT_S + SLACK_S:
            try:  # slowloris: a header line now and then, never the blank line that ends the head
                slow.sendall(b"X-Slow: 1\r\n")
                received = slow.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                received = b""
        elapsed = time.monotonic() - start
        assert received == b"", f"the slow connection was not closed: {received!r}"
        assert elapsed >= HEADER_TIMEOUT_S * 0.9  # cut by the head deadline, not by something else
    finally:
        slow.close()
    # Meanwhile, and after, normal requests are answered; a head over the size limit gets a 431.
    assert httpx.get(f"{url(limited)}/healthz", timeout=SLACK_S).status_code == 200
    big = httpx.get(f"{url(limited)}/healthz", headers={"X-Big": "a" * MAX_HEADER_BYTES}, timeout=SLACK_S)
    assert big.status_code == 431
    ok = httpx.get(f"{url(limited)}/healthz", headers={"X-Big": "a" * 1000}, timeout=SLACK_S)
    assert ok.status_code == 200


# -- registry calls --------------------------------------------------------------------------------------
class CountingProxy:
    """An HTTP proxy in front of MLflow that counts the API calls passing through, by path."""

    HOP = frozenset(
        {
            "host",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "content-length",
        }
    )

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.paths: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.paths.append(urlsplit(self.path).path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                answer = httpx.request(
                    self.command, proxy.target + self.path, content=body, headers=headers, timeout=60
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in proxy.HOP and key.lower() != "content-encoding":
                        self.send_header(key, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_calls(self) -> list[str]:
        """API calls so far, except the watcher's alias polls."""
        with self.lock:
            return [
                p for p in self.paths if p.startswith("/api/") and not p.endswith("/registered-models/alias")
            ]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def add_versions(client: MlflowClient, experiment_id: str, name: str, count: int) -> dict[str, float]:
    """Register `count` versions, each from its own run with its own metric; returns version -> metric."""
    expected: dict[str, float] = {}
    for _ in range(count):
        run = client.create_run(experiment_id)
        value = round(0.5 + len(expected) / 1000 + uuid.uuid4().int % 1000 / 1e7, 7)
        client.log_metric(run.info.run_id, "roc_auc", value)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        expected[str(version.version)] = value
    return expected


def test_versions_cost_a_bounded_number_of_registry_calls(
    tracking_server: Service, tmp_path: Path, model_name: str
) -> None:
    client = MlflowClient(tracking_server.uri)
    if not client.search_registered_models(f"name = '{model_name}'"):
        client.create_registered_model(model_name)
    experiment = client.create_experiment(f"limits-{uuid.uuid4().hex[:8]}")
    expected = add_versions(client, experiment, model_name, 3)
    proxy = CountingProxy(tracking_server.uri)
    server = start_server(
        tmp_path / "server",
        proxy.uri,
        model_name,
        {
            **principal_env("model-server"),  # the read-only principal, as the chart runs it
            "MODELOPS_VERSIONS_CACHE_S": "3600",
            # the rollout follower reads the registered model once at start, then not while this test counts
            # calls (the alias watcher, with no alias to follow, retries every 2 s: its polls are filtered out)
            "MODELOPS_POLL_INTERVAL_S": "3600",
            "MODELOPS_POLL_BACKOFF_MAX_S": "2",
        },
    )
    try:
        base = url(server)

        def versions(limit: int) -> tuple[dict[str, Any], list[str]]:
            before = len(proxy.registry_calls())
            response = httpx.get(f"{base}/models/versions", params={"limit": limit}, timeout=SLACK_S)
            assert response.status_code == 200, response.text
            return response.json(), proxy.registry_calls()[before:]

        # the rollout follower's first read of the registered model (at start) is not part of what is counted
        wait_for(
            lambda: any(p.endswith("/registered-models/get") for p in proxy.registry_calls()),
            SLACK_S,
            "the rollout follower's first poll",
        )
        body, few = versions(50)
        assert {v["version"]: v["metrics"]["roc_auc"] for v in body["versions"]} == expected
        assert body["served_version"] is None and not any(p.endswith("/runs/get") for p in few)
        assert versions(50)[1] == []  # the same answer again: from the cache

        expected |= add_versions(client, experiment, model_name, 12)
        body, many = versions(100)  # another limit: not cached
        assert {v["version"]: v["metrics"]["roc_auc"] for v in body["versions"]} == expected
        assert [v["version"] for v in body["versions"]] == [str(n) for n in range(15, 0, -1)]
        assert sorted(many) == sorted(few), "more versions must not mean more MLflow calls"
        assert len(few) <= 5, few

        # A burst of requests for an answer not cached yet shares one set of calls.
        before = len(proxy.registry_calls())
        with httpx.Client(timeout=SLACK_S) as http_client:
            threads = [
                threading.Thread(target=http_client.get, args=(f"{base}/models/versions?limit=200",))
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sorted(proxy.registry_calls()[before:]) == sorted(few)

        # A version that cannot be served: strangers get a fixed phrase, the admin the detail.
        client.set_registered_model_alias(model_name, "champion", "1")
        public = {"starting", "loading model", "no version holds alias champion"}
        wait_for(
            lambda: httpx.get(f"{base}/readyz", timeout=10).json()["reason"] not in public,
            SLACK_S * 2,
            "the load of v1 to fail",
        )
        response = httpx.get(f"{base}/readyz", timeout=10)
        assert response.status_code == 503
        assert_public(response)
        admin = httpx.get(f"{base}/readyz", headers=AUTH, timeout=10).json()
        assert admin["reason"] == response.json()["reason"] and admin["detail"] != admin["reason"]
    finally:
        server.stop()
        proxy.close()
