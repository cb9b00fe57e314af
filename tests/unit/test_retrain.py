"""Drift-triggered retraining: the watch's counting and cooldown on a fake clock, and both launchers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelops.errors import ConfigError
from modelops.monitoring.retrain import (
    RETRAIN_TAG,
    DriftWatch,
    KubernetesLauncher,
    LocalLauncher,
    RetrainLaunchFailed,
    RetrainRecord,
    build_job,
    drift_detected,
    launcher_from_settings,
)
from modelops.settings import ControllerSettings

HOUR = 3600.0
TOKEN = "sa-token-0123456789"


def metrics(drift: int | None) -> str:
    """A replica's /metrics text with the drift gauge at `drift` (None: no gauge, e.g. no full window yet)."""
    text = (
        "# HELP modelops_predicted_rows_total Rows predicted\n# TYPE modelops_predicted_rows_total counter\n"
    )
    text += "modelops_predicted_rows_total 42.0\n"
    if drift is not None:
        text += "# HELP modelops_drift_detected 1 when drifted\n# TYPE modelops_drift_detected gauge\n"
        text += f"modelops_drift_detected {float(drift)}\n"
    return text


DRIFTED = {"http://a:8000": metrics(0), "http://b:8000": metrics(1)}  # one replica drifted is enough
CLEAN = {"http://a:8000": metrics(0), "http://b:8000": metrics(0)}


class TagStore:
    """The registered model's tags (what Registry.model_tag / set_model_tag read and write)."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.reads = 0

    def model_tag(self, key: str) -> str | None:
        self.reads += 1
        return self.tags.get(key)

    def set_model_tag(self, key: str, value: str) -> None:
        self.tags[key] = value


@dataclass
class FakeLauncher:
    name: str = "fake"
    started: list[float] = field(default_factory=list)

    def launch(self, reason: str, now: float) -> str:
        self.started.append(now)
        return f"job-{len(self.started)}"


def watch(store: TagStore, launcher: Any, checks: int = 3, cooldown_s: float = 6 * HOUR) -> DriftWatch:
    return DriftWatch(store, launcher, checks=checks, check_s=60.0, cooldown_s=cooldown_s)


def test_sustained_drift_starts_exactly_one_retraining_per_cooldown() -> None:
    store, launcher = TagStore(), FakeLauncher()
    w = watch(store, launcher)
    # the controller ticks every 5 s for a day of drift; the watch checks once a minute
    started = [t for t in range(0, int(24 * HOUR), 5) if w.tick(float(t), DRIFTED)]
    # third drifted check at 120 s, then the first check once each 6 h cooldown is over
    expected = [120, 120 + 21600, 120 + 2 * 21600, 120 + 3 * 21600]
    assert started == expected
    assert launcher.started == [float(t) for t in expected]
    record = RetrainRecord.parse(store.tags[RETRAIN_TAG])
    assert record is not None
    assert (record.at, record.launcher, record.id) == (expected[-1], "fake", "job-4")
    # the streak kept growing through the cooldown: the record says how long the drift has lasted
    assert record.reason == "drift in 360 consecutive checks, 60 s apart"
    assert store.reads <= 8  # the tag is read when a cooldown may be over, not at every check


def test_drift_that_stops_one_check_short_starts_nothing() -> None:
    store, launcher = TagStore(), FakeLauncher()
    w = watch(store, launcher, checks=3)
    sequence = [DRIFTED, DRIFTED, CLEAN, DRIFTED, DRIFTED, CLEAN, DRIFTED, DRIFTED]
    assert not any(w.tick(60.0 * i, texts) for i, texts in enumerate(sequence))
    assert launcher.started == []
    assert w.streak == 2
    assert w.tick(60.0 * len(sequence), DRIFTED)  # the third in a row
    assert len(launcher.started) == 1


def test_no_evidence_neither_counts_nor_breaks_the_streak() -> None:
    launcher = FakeLauncher()
    w = watch(TagStore(), launcher, checks=2)
    assert drift_detected({}) is None
    assert drift_detected({"http://a:8000": metrics(None)}) is None
    assert drift_detected({"http://a:8000": "not prometheus {{{"}) is None
    assert not w.tick(0.0, DRIFTED)
    assert not w.tick(60.0, {})  # every replica down: no evidence
    assert not w.tick(120.0, {"http://a:8000": metrics(None)})
    assert w.tick(180.0, DRIFTED)
    assert launcher.started == [180.0]


def test_checks_are_spaced_by_check_s() -> None:
    launcher = FakeLauncher()
    w = watch(TagStore(), launcher, checks=3)
    # many ticks within one minute are one check
    assert not any(w.tick(float(t), DRIFTED) for t in range(0, 60, 5))
    assert w.streak == 1


def test_cooldown_survives_a_restarted_controller() -> None:
    store = TagStore()
    first = FakeLauncher()
    w1 = watch(store, first)
    started = [t for t in range(0, 300, 60) if w1.tick(float(t), DRIFTED)]
    assert started == [120]
    # the controller restarts: a new watch with no memory, the same registry tag
    second = FakeLauncher()
    w2 = watch(store, second)
    restarted = [t for t in range(200, int(12 * HOUR), 60) if w2.tick(float(t), DRIFTED)]
    # not before the first retraining's cooldown ends (120 + 6 h); then at the first check after it
    assert restarted[0] == 200 + 60 * 359 == 21740
    assert restarted == [21740]  # the next one would be at 21740 + 6 h, beyond the 12 h simulated


def test_a_malformed_tag_is_no_cooldown() -> None:
    store = TagStore()
    store.tags[RETRAIN_TAG] = "{not json"
    launcher = FakeLauncher()
    w = watch(store, launcher, checks=1)
    assert w.tick(0.0, DRIFTED)


@dataclass
class FailingLauncher:
    name: str = "kubernetes"
    calls: int = 0

    def launch(self, reason: str, now: float) -> str:
        self.calls += 1
        raise RetrainLaunchFailed("cannot create Job x: HTTP 403: forbidden")


def test_a_refused_launch_is_counted_and_retried_after_a_new_streak() -> None:
    store, launcher = TagStore(), FailingLauncher()
    w = watch(store, launcher, checks=3)
    results = [w.tick(60.0 * i, DRIFTED) for i in range(9)]
    assert results == [False] * 9
    # attempts at the 3rd, 6th and 9th drifted check: a refusal is not hammered every tick
    assert launcher.calls == 3
    assert w.launch_failures == 3
    assert w.last_error is not None and "403" in w.last_error
    assert RETRAIN_TAG not in store.tags  # nothing started: no cooldown


# -- the Kubernetes launcher against a fake API server ---------------------------------------------------------
CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "rel-modelops-stack-training", "namespace": "ml", "uid": "uid-1234"},
    "spec": {
        "schedule": "0 3 * * *",
        "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/component": "training"}},
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "training"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "trainer",
                                "image": "modelops:1",
                                "args": ["train", "--algorithm=logreg", "--promote=auto"],
                            }
                        ],
                    },
                },
            },
        },
    },
}


@dataclass
class FakeApi:
    url: str
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    refuse_create: bool = False


@pytest.fixture
def api() -> Iterator[FakeApi]:
    state = FakeApi("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _record(self) -> Any:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.requests.append((self.command, self.path, self.headers.get("authorization"), body))
            return body

        def _authorized(self) -> bool:
            if self.headers.get("authorization") != f"Bearer {TOKEN}":
                self._answer(401, {"kind": "Status", "message": "Unauthorized", "code": 401})
                return False
            return True

        def do_GET(self) -> None:
            self._record()
            if not self._authorized():
                return
            if self.path == "/apis/batch/v1/namespaces/ml/cronjobs/rel-modelops-stack-training":
                self._answer(200, CRONJOB)
            else:
                self._answer(404, {"kind": "Status", "message": f"{self.path} not found", "code": 404})

        def do_POST(self) -> None:
            body = self._record()
            if not self._authorized():
                return
            if state.refuse_create:
                message = (
                    'jobs.batch is forbidden: User "system:serviceaccount:ml:controller" cannot create '
                    'resource "jobs" in API group "batch" in the namespace "ml"'
                )
                self._answer(403, {"kind": "Status", "message": message, "reason": "Forbidden", "code": 403})
            elif self.path == "/apis/batch/v1/namespaces/ml/jobs":
                self._answer(201, {**body, "metadata": {**body["metadata"], "uid": "job-uid"}})
            else:
                self._answer(404, {"kind": "Status", "message": "not found", "code": 404})

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def k8s_launcher(api: FakeApi, tmp_path: Path, token: str = TOKEN) -> KubernetesLauncher:
    (tmp_path / "token").write_text(token + "\n")
    return KubernetesLauncher(
        "rel-modelops-stack-training", "ml", api.url, token_path=tmp_path / "token", ca_path=None
    )


def test_kubernetes_launcher_creates_a_job_from_the_cronjob_template(api: FakeApi, tmp_path: Path) -> None:
    launcher = k8s_launcher(api, tmp_path)
    name = launcher.launch("drift in 3 consecutive checks", 1_790_000_000.0)

    assert name == "rel-modelops-stack-training-drift-1790000000"
    (get, post) = api.requests
    assert get[:3] == (
        "GET",
        "/apis/batch/v1/namespaces/ml/cronjobs/rel-modelops-stack-training",
        f"Bearer {TOKEN}",
    )
    assert post[:3] == ("POST", "/apis/batch/v1/namespaces/ml/jobs", f"Bearer {TOKEN}")
    job = post[3]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta = job["metadata"]
    assert meta["name"] == name and meta["namespace"] == "ml"
    assert meta["labels"] == {"app.kubernetes.io/component": "training", "modelops.trigger": "drift"}
    assert meta["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "rel-modelops-stack-training",
            "uid": "uid-1234",
            "controller": True,
        }
    ]
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["modelops.trigger"] == "drift"
    (container,) = pod["spec"]["containers"]
    # appended: argparse keeps the last --promote, so the template's --promote=auto is overridden
    assert container["args"] == [
        "train",
        "--algorithm=logreg",
        "--promote=auto",
        "--promote",
        "rollout",
        "--trigger",
        "drift",
        "--min-delta",
        "-0.001",
    ]
    assert job["spec"]["backoffLimit"] == 1
    # the CronJob read from the API is not changed in place
    assert CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == (
        "--promote=auto"
    )


def test_the_appended_flags_win_in_the_trainer_parser() -> None:
    from modelops.cli import build_parser

    (container,) = build_job(CRONJOB, 1.0)["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.promote, args.trigger, args.algorithm) == ("rollout", "drift", "logreg")
    assert args.min_delta == -0.001  # a drift-triggered candidate must beat the champion, not tie


def test_a_job_name_fits_in_a_label_value() -> None:
    long = {**CRONJOB, "metadata": {**CRONJOB["metadata"], "name": "a" * 52}}
    name = build_job(long, 1_790_000_000.0)["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-drift-1790000000")


def test_a_template_without_command_or_args_is_refused() -> None:
    bare = json.loads(json.dumps(CRONJOB))
    del bare["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    with pytest.raises(RetrainLaunchFailed, match="neither command nor args"):
        build_job(bare, 1.0)


def test_a_forbidden_job_is_reported_and_counted_not_a_crash(api: FakeApi, tmp_path: Path) -> None:
    api.refuse_create = True
    launcher = k8s_launcher(api, tmp_path)
    with pytest.raises(RetrainLaunchFailed, match=r"create Job .*HTTP 403.*Role.*cannot create resource"):
        launcher.launch("drift", 1.0)

    store = TagStore()
    w = watch(store, launcher, checks=1)
    assert w.tick(0.0, DRIFTED) is False
    assert w.launch_failures == 1 and "HTTP 403" in (w.last_error or "")
    assert RETRAIN_TAG not in store.tags


def test_a_wrong_token_and_an_unreachable_api_are_reported(api: FakeApi, tmp_path: Path) -> None:
    with pytest.raises(RetrainLaunchFailed, match=r"read CronJob .*HTTP 401"):
        k8s_launcher(api, tmp_path, token="stale").launch("drift", 1.0)
    gone = KubernetesLauncher(
        "x", "ml", "http://127.0.0.1:9", token_path=tmp_path / "token", ca_path=None, timeout_s=2
    )
    with pytest.raises(RetrainLaunchFailed, match="unreachable"):
        gone.launch("drift", 1.0)
    missing = KubernetesLauncher("x", "ml", api.url, token_path=tmp_path / "none", ca_path=None)
    with pytest.raises(RetrainLaunchFailed, match="no service-account token"):
        missing.launch("drift", 1.0)


# -- the local launcher -----------------------------------------------------------------------------------------
def local_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "credentials").mkdir(parents=True)
    (home / "keys").mkdir()
    (home / "credentials" / "trainer").write_text("trainer-secret\n")
    (home / "keys" / "signing-key.pem").write_text("not a real key")
    return home


def test_local_launcher_runs_the_trainer_as_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the controller runs as the operator: the trainer it starts must not inherit that credential
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "operator")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "operator-secret")
    monkeypatch.setenv("MODELOPS_REGISTRY_WRITE_PASSWORD", "operator-secret")
    home = local_home(tmp_path)
    probe = (
        "import os, sys; e = os.environ; print(sys.argv[1:], e['MLFLOW_TRACKING_USERNAME'], "
        "e['MLFLOW_TRACKING_PASSWORD'], e['MODELOPS_SIGNING_KEY_PATH'], 'MODELOPS_REGISTRY_WRITE_PASSWORD' in e)"
    )
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        spawned.append(subprocess.Popen(*args, **kwargs))
        return spawned[-1]

    launcher = LocalLauncher(
        home,
        "http://127.0.0.1:5000",
        "m",
        "champion",
        command=[sys.executable, "-c", probe, "x"],
        spawn=spawn,
    )
    launched = launcher.launch("drift in 3 consecutive checks", 1_790_000_000.0)
    (process,) = spawned
    assert process.wait(timeout=30) == 0
    assert launched == f"pid-{process.pid}"
    log = (home / "logs" / "retrain-1790000000.log").read_text()
    assert "drift in 3 consecutive checks" in log
    assert f"['x'] trainer trainer-secret {home.resolve() / 'keys' / 'signing-key.pem'} False" in log


def test_local_launcher_command_is_the_drift_retraining(tmp_path: Path) -> None:
    launcher = LocalLauncher(tmp_path, "http://127.0.0.1:5000", "m", "champion")
    command = launcher.command
    assert command[1:4] == ["-m", "modelops", "train"]
    assert command[command.index("--home") + 1] == str(tmp_path.resolve())
    assert command[-6:] == ["--promote", "rollout", "--trigger", "drift", "--min-delta", "-0.001"]


def test_local_launcher_without_the_trainers_files_fails_clearly(tmp_path: Path) -> None:
    launcher = LocalLauncher(tmp_path, "http://127.0.0.1:5000", "m", "champion", command=["true"])
    with pytest.raises(RetrainLaunchFailed, match="no trainer credential"):
        launcher.launch("drift", 1.0)
    bad = LocalLauncher(local_home(tmp_path), "u", "m", "champion", command=[str(tmp_path / "missing")])
    with pytest.raises(RetrainLaunchFailed, match="cannot start the trainer"):
        bad.launch("drift", 1.0)


def test_launcher_from_settings(tmp_path: Path) -> None:
    local = launcher_from_settings(ControllerSettings(retrain_home=tmp_path, model_name="m"))
    assert isinstance(local, LocalLauncher) and "m" in local.command
    with pytest.raises(ConfigError, match="retrain_home"):
        launcher_from_settings(ControllerSettings(retrain_home=None))
    with pytest.raises(ConfigError, match="retrain_cronjob"):
        launcher_from_settings(ControllerSettings(retrain_launcher="kubernetes"))
    k8s = launcher_from_settings(
        ControllerSettings(retrain_launcher="kubernetes", retrain_cronjob="train", retrain_namespace="ml")
    )
    assert isinstance(k8s, KubernetesLauncher) and (k8s.cronjob, k8s.namespace) == ("train", "ml")
    watch_ = DriftWatch.from_settings(
        ControllerSettings(retrain_home=tmp_path, retrain_drift_checks=5, retrain_cooldown_s=10), TagStore()
    )
    assert (watch_.checks, watch_.cooldown_s) == (5, 10)
