"""`modelops up | status | predict | deploy | rollback | down` as a new user runs them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from modelops.local.processes import group_alive, port_free
from tests.support import VENV_BIN, free_port, modelops, wait_for


def up_args(home: Path, mlflow_port: int, server_port: int, *extra: str) -> list[str]:
    return [
        "up",
        "--home",
        str(home),
        "--mlflow-port",
        str(mlflow_port),
        "--server-port",
        str(server_port),
        "--controller-port",
        str(free_port()),
        *extra,
    ]


def trainer_env(home: Path) -> dict[str, str]:
    """The local platform's trainer login and signing key (what `modelops train --home` would find by itself)."""
    return {
        "MLFLOW_TRACKING_USERNAME": "trainer",
        "MLFLOW_TRACKING_PASSWORD": (home / "credentials" / "trainer").read_text().strip(),
        "MODELOPS_SIGNING_KEY_PATH": str(home / "keys" / "signing-key.pem"),
    }


def curl_body(stdout: str) -> dict:
    """The JSON of the ready-to-paste curl line that `up` prints."""
    line = next(x for x in stdout.splitlines() if x.strip().startswith("-d '"))
    return json.loads(line.strip()[4:-1])


def as_principal(monkeypatch: pytest.MonkeyPatch, home: Path, name: str) -> None:
    """MLflow's client in this process logs in as the local platform's principal `name`."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", (home / "credentials" / name).read_text().strip())


def test_up_status_predict_down_up_keeps_the_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    mlflow_port, server_port = free_port(), free_port()
    first = modelops(*up_args(home, mlflow_port, server_port, "--detach"), timeout_s=240)
    assert first.returncode == 0, first.stdout + first.stderr
    for expected in (
        "mlflow",
        "healthy",
        "first training",
        "model-server",
        "ready",
        f"http://127.0.0.1:{mlflow_port}",
        f"http://127.0.0.1:{server_port}/docs",
        "/metrics",
        "v1",
        "admin-token",
        "curl -s -X POST",
        "MLflow logins",
        str((home / "credentials").resolve()),
    ):
        assert expected in first.stdout, expected
    token_file = home / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token_file.read_text().strip()) >= 32
    # generated secrets only, readable by the owner only
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    private = [
        *(home / "credentials").iterdir(),
        home / "keys" / "signing-key.pem",
        home / "mlflow.db",
        home / "basic_auth.db",
        home / "basic_auth.ini",
    ]
    assert {p.name for p in (home / "credentials").iterdir()} >= {
        "admin",
        "trainer",
        "model-server",
        "operator",
    }
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (home / "credentials", home / "keys"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    passwords = [p.read_text().strip() for p in (home / "credentials").iterdir()]
    assert len(set(passwords)) == len(passwords) and min(map(len, passwords)) >= 32
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    assert httpx.get(mlflow_url + "/").status_code == 401  # the UI asks for a login
    operator = ("operator", (home / "credentials" / "operator").read_text().strip())
    assert httpx.get(mlflow_url + "/", auth=operator).status_code == 200
    as_principal(monkeypatch, home, "operator")
    state = json.loads((home / "stack.json").read_text())
    pids = list(state["pids"].values())
    try:
        status = modelops("status", "--home", str(home), "--output", "json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["running"] is True and report["model_version"] == "1"
        assert {c["health"] for c in report["components"].values()} == {"healthy"}

        response = httpx.post(f"http://127.0.0.1:{server_port}/predict", json=curl_body(first.stdout))
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        predicted = modelops("predict", "--home", str(home))
        assert predicted.returncode == 0 and json.loads(predicted.stdout)["prediction"] in (0, 1)
        assert (home / "logs" / "mlflow.log").exists() and (home / "logs" / "model-server.log").exists()

        # deploy and roll back through the CLI with the stored token
        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        run = client.search_runs([client.get_experiment_by_name("modelops").experiment_id])[0]
        deployed = modelops("deploy", "--home", str(home), "--run-id", run.info.run_id)
        assert deployed.returncode == 0, deployed.stderr
        assert (
            modelops("rollback", "--home", str(home)).returncode == 1
        )  # v1 was never replaced: nothing to go back to
        rejected = modelops("deploy", "--home", str(home), "--version", "1", "--token", "wrong")
        assert rejected.returncode == 1 and "401" in rejected.stderr
        # the only alias move so far, the first training's promotion, is in the audit trail
        history = modelops("history", "--home", str(home), "--tracking-uri", mlflow_url, "--output", "json")
        assert history.returncode == 0, history.stderr
        assert [(m["action"], m["who"], m["from"], m["to"]) for m in json.loads(history.stdout)] == [
            ("promotion", "trainer", None, "1")
        ]

        # a progressive rollout under `up`: the local controller decides the steps from the server's metrics
        trained = modelops(
            "train", "--home", str(home), "--tracking-uri", mlflow_url, "--promote", "never", "--seed", "7",
            "--output", "json", env=trainer_env(home), timeout_s=240,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        started = modelops(
            "rollout", "start", "--home", str(home), "--version", "2", "--steps", "50,100", "--interval", "3s"
        )
        assert started.returncode == 0, started.stderr
        # steady traffic from `modelops loadtest` meanwhile: not one failed request allowed (exit code 3 if any)
        load = subprocess.Popen(
            [str(VENV_BIN / "modelops"), "loadtest", "--home", str(home), "--stages", "4:25s",
             "--max-error-rate", "0", "--output", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = load.communicate(timeout=120)
        assert load.returncode == 0, out + err
        summary = json.loads(out)
        assert summary["overall"]["error_rate"] == 0 and set(summary["overall"]["versions"]) == {"1", "2"}
        rollout = modelops("rollout", "status", "--home", str(home), "--output", "json")
        final = json.loads(rollout.stdout)
        assert final["state"] == "promoted", (final, (home / "logs" / "controller.log").read_text()[-3000:])
        verdicts = [d["verdict"] for d in final["decisions"]]
        assert verdicts[0] == "start" and verdicts[-1] == "promote" and "pass" in verdicts, verdicts
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{server_port}/model").json()["version"] == "2",
            30,
            "v2 served",
        )
    finally:
        down = modelops("down", "--home", str(home))
    assert down.returncode == 0, down.stderr
    assert not any(group_alive(pid) for pid in pids), "a process outlived `modelops down`"
    assert port_free("127.0.0.1", mlflow_port) and port_free("127.0.0.1", server_port)
    assert modelops("status", "--home", str(home)).returncode == 3

    again = modelops(*up_args(home, mlflow_port, server_port, "--detach"), timeout_s=240)
    try:
        assert {p.read_text().strip() for p in (home / "credentials").iterdir()} == set(passwords)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "first training" not in again.stdout  # the registry survived: no new training
        # the champion the rollout promoted, v2, serves again
        assert httpx.get(f"http://127.0.0.1:{server_port}/readyz").json()["model_version"] == "2"
        versions = MlflowClient(f"http://127.0.0.1:{mlflow_port}").search_model_versions(
            "name='ModelOpsStudioModel'"
        )
        assert len(versions) == 2
    finally:
        modelops("down", "--home", str(home))


def test_port_in_use_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = modelops(*up_args(tmp_path / "home", port, free_port(), "--detach"))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--mlflow-port" in result.stderr
    assert not (tmp_path / "home" / "stack.json").exists()
    assert not (tmp_path / "home" / "logs").exists()


def test_a_component_that_fails_to_start_is_reported_and_everything_stops(tmp_path: Path) -> None:
    mlflow_port, server_port = free_port(), free_port()
    result = modelops(
        *up_args(
            tmp_path / "home", mlflow_port, server_port, "--detach", "--backend-store-uri", "notadb://nowhere"
        ),
        timeout_s=180,
    )
    assert result.returncode == 3  # EXIT_UNHEALTHY: a component did not start
    assert "mlflow exited with code" in result.stderr and "mlflow.log" in result.stderr
    assert "notadb" in result.stderr  # the log tail says what went wrong
    assert not (tmp_path / "home" / "stack.json").exists()
    assert port_free("127.0.0.1", mlflow_port) and port_free("127.0.0.1", server_port)


def test_foreground_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mlflow_port, server_port = free_port(), free_port()
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "modelops"), *up_args(home, mlflow_port, server_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "Press Ctrl-C" in (tmp_path / "up.log").read_text(), 240, "the stack to be up")
        pids = list(json.loads((home / "stack.json").read_text())["pids"].values())
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert not any(group_alive(pid) for pid in pids)
    assert not (home / "stack.json").exists()
    assert "Stopped." in (tmp_path / "up.log").read_text()


def state_pids(home: Path) -> dict[str, int]:
    return dict(json.loads((home / "stack.json").read_text())["pids"])


def test_foreground_supervisor_restarts_what_dies_and_keeps_serving(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mlflow_port, server_port = free_port(), free_port()
    log_path = tmp_path / "up.log"
    proc = subprocess.Popen(
        [str(VENV_BIN / "modelops"), *up_args(home, mlflow_port, server_port)],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = f"http://127.0.0.1:{server_port}"
    try:
        wait_for(lambda: "Press Ctrl-C" in log_path.read_text(), 240, "the stack to be up")
        body = curl_body(log_path.read_text())
        first = state_pids(home)

        # MLflow dies: the model server keeps answering, and MLflow comes back under a new process group
        os.killpg(first["mlflow"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        answered = 0
        while state_pids(home)["mlflow"] == first["mlflow"] and time.monotonic() < deadline:
            assert httpx.post(f"{server}/predict", json=body, timeout=10).status_code == 200
            answered += 1
            time.sleep(0.2)
        assert answered > 0 and state_pids(home)["mlflow"] != first["mlflow"], log_path.read_text()[-2000:]
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{mlflow_port}/health").status_code == 200, 120, "MLflow back"
        )
        assert "mlflow exited with code" in log_path.read_text() and "restarting in" in log_path.read_text()

        # the model server dies: it is restarted and serves the champion again
        os.killpg(first["model-server"], signal.SIGKILL)
        wait_for(lambda: state_pids(home)["model-server"] != first["model-server"], 60, "a new model server")
        wait_for(
            lambda: httpx.get(f"{server}/readyz").status_code == 200, 120, "the model server ready again"
        )
        assert httpx.post(f"{server}/predict", json=body, timeout=10).status_code == 200
        assert proc.poll() is None  # the supervisor itself never stopped
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            modelops("down", "--home", str(home))
    assert port_free("127.0.0.1", mlflow_port) and port_free("127.0.0.1", server_port)


def test_up_on_a_half_running_stack_starts_what_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mlflow_port, server_port = free_port(), free_port()
    first = modelops(*up_args(home, mlflow_port, server_port, "--detach"), timeout_s=240)
    assert first.returncode == 0, first.stdout + first.stderr
    try:
        pids = state_pids(home)
        os.killpg(pids["model-server"], signal.SIGKILL)
        wait_for(lambda: not group_alive(pids["model-server"]), 10, "the model server to be gone")
        # the flags need not repeat the ports: the stack is completed where it runs
        again = modelops("up", "--home", str(home), "--detach", timeout_s=240)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Completing" in again.stdout and "first training" not in again.stdout
        assert state_pids(home)["mlflow"] == pids["mlflow"]  # MLflow was left alone
        assert httpx.get(f"http://127.0.0.1:{server_port}/readyz").json()["model_version"] == "1"
        # and with everything running, `up` changes nothing
        third = modelops("up", "--home", str(home), "--detach", timeout_s=240)
        assert third.returncode == 0, third.stderr
        assert state_pids(home) == {**pids, "model-server": state_pids(home)["model-server"]}
    finally:
        modelops("down", "--home", str(home))


@pytest.fixture
def postgres_url() -> str:
    base = os.environ.get("MODELOPS_TEST_DATABASE_URL")
    if not base:
        pytest.skip(
            "PostgreSQL tests need MODELOPS_TEST_DATABASE_URL=postgresql://user:pw@host:port/db of a role "
            "that may CREATE DATABASE (.ci/run sets it up; see DEVELOPERS.md)"
        )
    import psycopg

    name = f"modelops_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


def test_tracking_server_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    home = tmp_path / "home"
    mlflow_port, server_port = free_port(), free_port()
    result = modelops(
        *up_args(home, mlflow_port, server_port, "--detach", "--backend-store-uri", postgres_url),
        timeout_s=300,
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert not (home / "mlflow.db").exists()
        import psycopg

        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
            assert conn.execute("SELECT version FROM model_versions").fetchall() == [(1,)]
    finally:
        modelops("down", "--home", str(home))
