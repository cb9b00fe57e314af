"""`modelops up | down | status`: the whole platform as local processes under $MODELOPS_HOME.

    MLflow tracking server  (SQLite + local artifacts by default, artifacts proxied)
    model server            (follows the `champion` alias; routes a share to the `challenger` during a rollout)
    rollout controller      (decides rollout steps from the server's metrics; starts a retraining on drift)
A first training runs when the registry has no champion, so `up` always ends with a model serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from modelops.auth import (
    ADMIN,
    DEFAULT_EXPERIMENT,
    FLASK_SECRET,
    MODEL_SERVER,
    OPERATOR,
    TRAINER,
    auth_config,
    bootstrap,
    experiment_grants,
    grant_experiments,
    local_credentials,
    local_signing_keys,
    private_dir,
)
from modelops.errors import ConfigError, StartupFailed
from modelops.local.processes import Child, group_alive, require_free_ports, stop_group
from modelops.settings import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from modelops.waiting import NotYet, wait_until

STATE_FILE = "stack.json"
TOKEN_FILE = "admin-token"
HOST = "127.0.0.1"


@dataclass
class StackConfig:
    """What `modelops up` starts, and where it keeps its state."""

    home: Path
    mlflow_port: int = 5000
    server_port: int = 8000
    controller_port: int = 8090
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_ALIAS
    startup_timeout_s: float = 120.0
    poll_interval_s: float = 5.0
    s3_endpoint_url: str | None = None

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def server_url(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    @property
    def controller_url(self) -> str:
        return f"http://{HOST}:{self.controller_port}"


@dataclass
class StackState:
    """Written to $MODELOPS_HOME/stack.json while a stack runs; read by `down` and `status`."""

    pids: dict[str, int]
    urls: dict[str, str]
    mode: str
    started_at: float = field(default_factory=time.time)
    model_name: str = DEFAULT_MODEL_NAME
    supervisor_pid: int | None = None


def admin_token(home: Path) -> str:
    """The admin token in $MODELOPS_HOME/admin-token (mode 0600), created on first use."""
    path = home / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def read_state(home: Path) -> StackState | None:
    try:
        return StackState(**json.loads((home / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: StackState) -> None:
    tmp = home / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(home / STATE_FILE)


class Progress:
    """One line per step: `  mlflow        starting ...` then `healthy (3.1 s)`."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def step(self, name: str, state: str) -> None:
        print(f"  {name:<14} {state:<10} {time.monotonic() - self.t0:6.1f} s", file=self.out, flush=True)


def _python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists; tighten it if it does."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def _secure_registry(config: StackConfig) -> dict[str, str]:
    """Credentials, signing keys and MLflow's auth database for the local platform (idempotent)."""
    home = config.home.resolve()
    credentials = local_credentials(home).all()
    local_signing_keys(home)
    if not config.backend_store_uri:
        _private_file(home / "mlflow.db")
    auth_db = home / "basic_auth.db"
    _private_file(auth_db)
    bootstrap(
        f"sqlite:///{auth_db}",
        config.model_name,
        credentials[ADMIN],
        {name: credentials[name] for name in (TRAINER, MODEL_SERVER, OPERATOR)},
    )
    ini = home / "basic_auth.ini"
    _private_file(ini)
    ini.write_text(auth_config(f"sqlite:///{auth_db}"))
    return credentials


def _create_registered_model(config: StackConfig, admin_password: str) -> None:
    """The registered model and the experiments the platform writes to, created by the admin so that no
    principal owns them, and the principals' grants on the experiments (see modelops.auth)."""
    from pydantic import SecretStr

    from modelops.errors import RegistryError
    from modelops.registry import RestWriter

    writer = RestWriter(config.mlflow_url, ADMIN, SecretStr(admin_password))
    try:
        writer.post("registered-models/create", {"name": config.model_name})
    except RegistryError as exc:
        if "already exists" not in exc.message:
            raise
    grants = experiment_grants(DEFAULT_EXPERIMENT)
    ids = {name: writer.experiment_id(name) for name in grants}
    grant_experiments(f"sqlite:///{config.home.resolve() / 'basic_auth.db'}", ids, grants)


def _children(config: StackConfig, token: str, credentials: dict[str, str]) -> tuple[Child, Child, Child]:
    home = config.home.resolve()
    logs = home / "logs"
    backend = config.backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts = config.artifacts_destination or str(home / "artifacts")
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELOPS_", "MLFLOW_TRACKING_", "MLFLOW_AUTH_"))
    }
    mlflow_env = {
        **base_env,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(home / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials[ADMIN],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials[FLASK_SECRET],
    }
    if config.s3_endpoint_url:
        mlflow_env["MLFLOW_S3_ENDPOINT_URL"] = config.s3_endpoint_url
    mlflow = Child(
        "mlflow",
        _python_cmd(
            "mlflow",
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            HOST,
            "--port",
            str(config.mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            artifacts,
        ),
        mlflow_env,
        logs / "mlflow.log",
    )
    server_env = {
        **base_env,
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "MODELOPS_MODEL_NAME": config.model_name,
        "MODELOPS_MODEL_ALIAS": config.alias,
        "MODELOPS_ADMIN_TOKEN": token,
        "MODELOPS_POLL_INTERVAL_S": str(config.poll_interval_s),
        "MODELOPS_MODEL_DIR": str(home / "models"),
        "MODELOPS_SIGNING_PUBLIC_KEY_PATH": str(home / "keys" / "signing-public.pem"),
        # follows the alias as the read-only principal; the admin API writes as the operator
        "MLFLOW_TRACKING_USERNAME": MODEL_SERVER,
        "MLFLOW_TRACKING_PASSWORD": credentials[MODEL_SERVER],
        "MODELOPS_REGISTRY_WRITE_USERNAME": OPERATOR,
        "MODELOPS_REGISTRY_WRITE_PASSWORD": credentials[OPERATOR],
    }
    (home / "models").mkdir(parents=True, exist_ok=True)
    server = Child(
        "model-server",
        _python_cmd(
            "modelops",
            "serve",
            "--host",
            HOST,
            "--port",
            str(config.server_port),
        ),
        server_env,
        logs / "model-server.log",
    )
    controller_env = {
        **base_env,
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "MODELOPS_MODEL_NAME": config.model_name,
        "MODELOPS_MODEL_ALIAS": config.alias,
        "MLFLOW_TRACKING_USERNAME": MODEL_SERVER,
        "MLFLOW_TRACKING_PASSWORD": credentials[MODEL_SERVER],
        # moves the aliases when a rollout step decides, as the operator
        "MODELOPS_REGISTRY_WRITE_USERNAME": OPERATOR,
        "MODELOPS_REGISTRY_WRITE_PASSWORD": credentials[OPERATOR],
        "MODELOPS_CONTROLLER_TARGETS": config.server_url,
        "MODELOPS_CONTROLLER_HEALTH_HOST": HOST,
        "MODELOPS_CONTROLLER_HEALTH_PORT": str(config.controller_port),
        # a drift-triggered retraining runs `modelops train` with the trainer's credentials and key from here
        "MODELOPS_RETRAIN_LAUNCHER": "local",
        "MODELOPS_RETRAIN_HOME": str(home),
    }
    controller = Child(
        "controller", _python_cmd("modelops", "controller"), controller_env, logs / "controller.log"
    )
    return mlflow, server, controller


def _wait_healthy(child: Child, url: str, timeout_s: float) -> None:
    """Until `url` answers 200; StartupFailed (with the log tail) if the child exits or the time runs out."""

    def attempt(timeout: float) -> None:
        code = child.exited()
        if code is not None:
            raise StartupFailed(
                f"{child.name} exited with code {code} while starting; last lines of "
                f"{child.log_path}:\n{child.tail()}"
            )
        try:
            response = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            raise NotYet(f"{type(exc).__name__}") from None
        if response.status_code != 200:
            raise NotYet(f"HTTP {response.status_code}")

    wait_until(
        attempt,
        what=f"{child.name} at {url}",
        timeout_s=timeout_s,
        attempt_timeout_s=2.0,
        max_delay_s=0.5,
        on_timeout=lambda reason: StartupFailed(
            f"{child.name} was not healthy at {url} within {timeout_s:g} s ({reason}); last lines of "
            f"{child.log_path}:\n{child.tail()}"
        ),
    )


def _ensure_champion(config: StackConfig, progress: Progress, trainer_password: str) -> str:
    """The champion version; trains (as the trainer principal) and promotes a first model when there is none."""
    from pydantic import SecretStr

    from modelops.registry import Registry
    from modelops.settings import RegistrySettings

    registry = Registry(
        RegistrySettings(
            tracking_uri=config.mlflow_url,
            model_name=config.model_name,
            model_alias=config.alias,
            tracking_username=TRAINER,
            tracking_password=SecretStr(trainer_password),
        )
    )
    champion = registry.alias_version()
    if champion is not None:
        return champion.version
    progress.step("first training", "running")
    from modelops.training.options import TrainOptions
    from modelops.training.publish import run_training

    log_path = config.home / "logs" / "training.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    options = TrainOptions(
        tracking_uri=config.mlflow_url,
        model_name=config.model_name,
        experiment=DEFAULT_EXPERIMENT,
        alias=config.alias,
        wait_s=30,
        signing_key_path=config.home.resolve() / "keys" / "signing-key.pem",
    )
    # MLflow prints its own progress on stderr: keep it in the log, not on the user's screen.
    with log_path.open("a") as log, contextlib.redirect_stderr(log):
        outcome = run_training(options)
    progress.step("first training", f"v{outcome.version}")
    return outcome.version


def summary(config: StackConfig, version: str, example: list[float] | None = None) -> str:
    token_path = (config.home / TOKEN_FILE).resolve()
    rows = [
        ("MLflow UI", config.mlflow_url),
        ("Web console", f"{config.server_url}/ui (sign in with the admin token)"),
        ("Model server API docs", f"{config.server_url}/docs"),
        ("Metrics", f"{config.server_url}/metrics"),
        ("Served model", f"{config.model_name} v{version} (alias {config.alias})"),
        ("Admin token", str(token_path)),
        ("MLflow logins", f"{(config.home / 'credentials').resolve()}/<user> (users: operator, trainer)"),
        ("Logs", str((config.home / "logs").resolve())),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [
        "",
        *(f"  {k:<{width}}  {v}" for k, v in rows),
        "",
        "  Try a prediction:",
        f"    curl -s -X POST {config.server_url}/predict -H 'Content-Type: application/json' \\",
        f"      -d '{json.dumps({'features': example or []})}'",
        "  or:  modelops predict   (in the virtualenv: .venv/bin/modelops predict)",
        "  Roll out a new version progressively:  modelops rollout start --version <v>",
        "",
    ]
    return "\n".join(lines)


def _port(url: str, default: int) -> int:
    return int(url.rsplit(":", 1)[1]) if url.rsplit(":", 1)[-1].isdigit() else default


def _start_unless_running(
    child: Child, running: dict[str, int], progress: Progress, started: list[Child]
) -> None:
    if child.name in running:
        progress.step(child.name, "running")
        return
    progress.step(child.name, "starting")
    child.start()
    started.append(child)


def up(config: StackConfig, detach: bool, out: TextIO = sys.stdout) -> int:
    """Start the stack, or what is missing of it. Foreground: supervise (restart what dies) until SIGINT/SIGTERM.
    Detached: return once healthy."""
    home = config.home
    existing = read_state(home)
    running: dict[str, int] = {}
    if existing is not None:
        if (
            existing.supervisor_pid
            and existing.supervisor_pid != os.getpid()
            and group_alive(existing.supervisor_pid)
        ):
            raise ConfigError(
                f"a stack is already running in the foreground from {home.resolve()} "
                f"(`modelops up` pid {existing.supervisor_pid}); stop it with Ctrl-C there or `modelops down`"
            )
        running = {name: pid for name, pid in existing.pids.items() if group_alive(pid)}
        # complete the stack where it runs, whatever ports the flags say
        config.mlflow_port = _port(existing.urls.get("mlflow", ""), config.mlflow_port)
        config.server_port = _port(existing.urls.get("model-server", ""), config.server_port)
        config.controller_port = _port(existing.urls.get("controller", ""), config.controller_port)
    ports = {
        "--mlflow-port": config.mlflow_port,
        "--server-port": config.server_port,
        "--controller-port": config.controller_port,
    }
    require_free_ports(HOST, {flag: port for flag, port in ports.items() if _PORT_OWNER[flag] not in running})
    private_dir(home)
    token = admin_token(home)
    credentials = _secure_registry(config)
    mlflow, server, controller = _children(config, token, credentials)
    children = [mlflow, server, controller]
    for child in children:
        if child.name in running:
            child.adopt(running[child.name])
    started: list[Child] = []
    progress = Progress(out)
    verb = "Completing" if running else "Starting"
    print(f"{verb} ModelOps Stack from {home.resolve()}", file=out, flush=True)
    try:
        _start_unless_running(mlflow, running, progress, started)
        _wait_healthy(mlflow, f"{config.mlflow_url}/health", config.startup_timeout_s)
        progress.step("mlflow", "healthy")
        _create_registered_model(config, credentials[ADMIN])
        version = _ensure_champion(config, progress, credentials[TRAINER])
        _start_unless_running(server, running, progress, started)
        _wait_healthy(server, f"{config.server_url}/readyz", config.startup_timeout_s)
        model = httpx.get(f"{config.server_url}/model", timeout=5).json()
        version, example = model.get("version", version), model.get("input_example")
        progress.step("model-server", "ready")
        _start_unless_running(controller, running, progress, started)
        _wait_healthy(controller, f"{config.controller_url}/healthz", config.startup_timeout_s)
        progress.step("controller", "healthy")
    except BaseException:
        for child in reversed(started):  # only what this call started: a running component keeps running
            child.stop()
        raise
    state = StackState(
        pids={c.name: c.pid for c in children},
        urls={
            "mlflow": config.mlflow_url,
            "model-server": config.server_url,
            "controller": config.controller_url,
        },
        mode="detached" if detach else "foreground",
        model_name=config.model_name,
        supervisor_pid=None if detach else os.getpid(),
    )
    _write_state(home, state)
    print(summary(config, version, example), file=out, flush=True)
    if detach:
        print("  Running in the background; stop it with: modelops down", file=out, flush=True)
        return 0
    print("  Press Ctrl-C to stop.", file=out, flush=True)
    return Supervisor(children, home, state, out).run()


_PORT_OWNER = {"--mlflow-port": "mlflow", "--server-port": "model-server", "--controller-port": "controller"}
RESTART_LIMIT = 5
RESTART_WINDOW_S = 600.0
RESTART_DELAY_MAX_S = 30.0


class Supervisor:
    """Keeps the foreground stack running: a component that exits is restarted with backoff (its log tail
    reported), never taking the others down; after RESTART_LIMIT restarts within RESTART_WINDOW_S it gives up on
    that component and says so. SIGINT/SIGTERM stop everything in order."""

    def __init__(self, children: list[Child], home: Path, state: StackState, out: TextIO) -> None:
        self.children, self.home, self.state, self.out = children, home, state, out
        self.stopping = False

    def _handle(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.2, end - time.monotonic()))

    def check(self, now: float) -> None:
        """One pass: restart (or give up on) each component that has exited."""
        for child in self.children:
            if child.given_up or (code := child.exited()) is None:
                continue
            child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_S]
            if len(child.restarts) >= RESTART_LIMIT:
                child.given_up = True
                print(
                    f"\n{child.name} exited with code {code} after {RESTART_LIMIT} restarts in "
                    f"{RESTART_WINDOW_S / 60:g} min: giving up on it (the rest keeps running). Last lines of "
                    f"{child.log_path}:\n{child.tail()}\nFix the cause, then run `modelops up` again to start it.",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            delay = min(2.0 ** len(child.restarts), RESTART_DELAY_MAX_S)
            print(
                f"\n{child.name} exited with code {code}; restarting in {delay:g} s (restart "
                f"{len(child.restarts) + 1} of at most {RESTART_LIMIT} in {RESTART_WINDOW_S / 60:g} min). Last lines "
                f"of {child.log_path}:\n{child.tail()}",
                file=sys.stderr,
                flush=True,
            )
            self._sleep(delay)
            if self.stopping:
                return
            child.start()
            child.restarts.append(time.monotonic())
            self.state.pids[child.name] = child.pid
            _write_state(self.home, self.state)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        try:
            while not self.stopping:
                self.check(time.monotonic())
                self._sleep(0.5)
        finally:
            print("\nStopping ...", file=self.out, flush=True)
            # the model server first, so it never sees MLflow vanish under it
            for child in reversed(self.children):
                child.stop()
            (self.home / STATE_FILE).unlink(missing_ok=True)
            print("Stopped.", file=self.out, flush=True)
        return 0


def down(home: Path, out: TextIO = sys.stdout) -> int:
    state = read_state(home)
    if state is None:
        print(f"No stack is running from {home.resolve()}.", file=out)
        return 0
    # model server first, so it never sees MLflow vanish under it
    for name, pgid in sorted(state.pids.items(), key=lambda item: item[0] == "mlflow"):
        stop_group(pgid)
        print(f"  {name:<14} stopped", file=out)
    (home / STATE_FILE).unlink(missing_ok=True)
    return 0


def status(home: Path) -> dict[str, Any]:
    """Each component's state and URL, and the served model version."""
    state = read_state(home)
    if state is None:
        return {"running": False, "home": str(home.resolve()), "components": {}, "model_version": None}
    components: dict[str, Any] = {}
    version = None
    checks = {"mlflow": "/health", "model-server": "/readyz", "controller": "/healthz"}
    for name, pgid in state.pids.items():
        url = state.urls.get(name, "")
        info: dict[str, Any] = {
            "pid": pgid,
            "url": url,
            "process": "running" if group_alive(pgid) else "dead",
        }
        try:
            response = httpx.get(url + checks.get(name, "/"), timeout=3)
            info["health"] = (
                "healthy" if response.status_code == 200 else f"unhealthy (HTTP {response.status_code})"
            )
            if name == "model-server" and response.status_code == 200:
                version = response.json().get("model_version")
        except httpx.HTTPError as exc:
            info["health"] = f"unreachable ({type(exc).__name__})"
        components[name] = info
    running = all(c["process"] == "running" and c["health"] == "healthy" for c in components.values())
    return {
        "running": running,
        "home": str(home.resolve()),
        "mode": state.mode,
        "components": components,
        "model_name": state.model_name,
        "model_version": version,
    }
