"""Helpers the test folders share: free ports, real subprocess services, waiting."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from modelops.local.processes import stop_group

VENV_BIN = Path(sys.executable).parent


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this process.

    The kernel may give the same free port to two binds in a row once the first socket is closed, so a test that
    asks for two ports (MLflow's and the controller's) could get one port twice; remembering what was handed out
    makes every answer in a test session distinct.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


class Service:
    """A real server process on 127.0.0.1 with a log file, restartable."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        health_url: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 90,
        uri: str = "",
    ) -> None:
        self.name, self.argv, self.health_url, self.uri = name, argv, health_url, uri
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        try:
            wait_for(self._healthy, self.timeout_s, f"{self.name} at {self.health_url}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not become healthy:\n{self.tail()}") from None
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
        return http_ok(self.health_url)()

    def stop(self) -> None:
        if self.proc is not None:
            # the product's own supervisor stops it: SIGTERM to the group, then SIGKILL after a grace period
            stop_group(self.proc.pid, timeout_s=15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# Principals of every test MLflow server (MLflow's basic-auth app, as in the product).
TEST_PASSWORDS = {
    "admin": "test-admin-password-0123",
    "trainer": "test-trainer-password-0123",
    "model-server": "test-server-password-0123",
    "operator": "test-operator-password-0123",
}


class MlflowService(Service):
    """A real `mlflow server --app-name basic-auth` with proxied artifacts and the product's principals."""

    def __init__(
        self, tmp: Path, port: int, backend_uri: str, artifacts_destination: str, env: dict[str, str]
    ) -> None:
        from modelops.auth import auth_config, ensure_users

        self.root = tmp
        self.backend_uri = backend_uri
        self.auth_db_uri = f"sqlite:///{tmp / 'basic_auth.db'}"
        passwords = {k: v for k, v in TEST_PASSWORDS.items() if k != "admin"}
        ensure_users(self.auth_db_uri, TEST_PASSWORDS["admin"], passwords)
        (tmp / "basic_auth.ini").write_text(auth_config(self.auth_db_uri))
        argv = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts_destination,
        ]
        super().__init__(
            "mlflow",
            argv,
            f"http://127.0.0.1:{port}/health",
            tmp,
            env={
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
                "MLFLOW_AUTH_ADMIN_PASSWORD": TEST_PASSWORDS["admin"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret-key",
                **env,
            },
            cwd=tmp,
            uri=f"http://127.0.0.1:{port}",
        )

    def grant(self, model_name: str) -> None:
        """Create `model_name` and the experiments, owned by no principal, and grant trainer + operator on them
        (as the chart's `modelops auth bootstrap` does for the configured model and experiment; the tests'
        trainer writes to the experiment `tests`)."""
        from modelops.auth import grant_model

        grant_model(self.auth_db_uri, model_name, self.backend_uri, experiment="tests")


def mlflow_server(
    tmp: Path,
    port: int | None = None,
    backend_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
) -> MlflowService:
    """A real `mlflow server` (SQLite by default) with auth and proxied artifacts, not yet started."""
    tmp.mkdir(parents=True, exist_ok=True)
    return MlflowService(
        tmp,
        port or free_port(),
        backend_uri or f"sqlite:///{tmp / 'mlflow.db'}",
        artifacts_destination or str(tmp / "artifacts"),
        env or {},
    )


def principal_env(name: str) -> dict[str, str]:
    """Environment that makes a process (or MLflow's client) authenticate as test principal `name`."""
    return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": TEST_PASSWORDS[name]}


def serve_argv(port: int, workers: int = 1) -> list[str]:
    """The command line of a real model server on 127.0.0.1."""
    return [
        str(VENV_BIN / "modelops"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def moto_server(tmp: Path, port: int | None = None) -> Service:
    """moto in server mode: an S3-compatible endpoint on loopback (no MinIO binary is obtainable here)."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return Service("moto", argv, f"http://127.0.0.1:{port}/moto-api/", tmp, uri=f"http://127.0.0.1:{port}")


def modelops(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `modelops` command line."""
    return subprocess.run(
        [str(VENV_BIN / "modelops"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout_s,
        cwd=cwd,
        check=False,
    )
