"""Drift-triggered retraining: when served inputs drift for several checks in a row, start one retraining.

The rollout controller calls `DriftWatch.tick` every tick with the text of every replica's /metrics (scraping
/metrics is also what refreshes a replica's drift gauge). Every `retrain_check_s` seconds the watch takes one
check: drifted when any replica's `modelops_drift_detected` is 1. After `retrain_drift_checks` drifted checks in
a row it starts one retraining, unless the last one is younger than `retrain_cooldown_s`. The last retraining is
kept in a registered-model tag (`modelops.retrain`), so a restarted controller, or a second one, respects the
cooldown. The retraining itself never replaces the champion: it runs `modelops train --promote rollout
--trigger drift`, so a better model enters as the challenger of a canary rollout.

Two launchers: a detached local `modelops train` (the local platform) and a Job copied from the training
CronJob's template through the Kubernetes API (the chart).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelops.errors import ConfigError, ModelOpsError
from modelops.settings import ControllerSettings

log = logging.getLogger(__name__)

RETRAIN_TAG = "modelops.retrain"
DRIFT_GAUGE = "modelops_drift_detected"
TRIGGER = "drift"
# What a retraining adds to the trainer's flags; argparse keeps the last value of a repeated flag, so these
# override whatever --promote the CronJob's template (or the local default) has.
# A drift-triggered candidate must beat the champion by a margin (0.001 of the metric), not merely tie: retraining on
# unchanged data gives the same model, which must not roll out again every cooldown on an outsider's drifted traffic.
RETRAIN_ARGS = ("--promote", "rollout", "--trigger", TRIGGER, "--min-delta", "-0.001")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class RetrainLaunchFailed(ModelOpsError):
    """A retraining could not be started (the Kubernetes API refused, the trainer could not be spawned)."""

    code = "retrain_launch_failed"


class TagStore(Protocol):
    """Where the last retraining is kept: the registered model's tags (modelops.registry.Registry)."""

    def model_tag(self, key: str) -> str | None: ...

    def set_model_tag(self, key: str, value: str) -> None: ...


class Launcher(Protocol):
    name: str

    def launch(self, reason: str, now: float) -> str:
        """Start one retraining; returns its id (Job name, process id). RetrainLaunchFailed when it cannot."""
        ...


@dataclass(frozen=True)
class RetrainRecord:
    """The last drift-triggered retraining, as stored in the `modelops.retrain` tag."""

    at: float
    launcher: str
    id: str
    reason: str

    def render(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | None) -> RetrainRecord | None:
        """The record in a tag value; None for no tag or a malformed one (then no cooldown applies)."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(float(data["at"]), str(data["launcher"]), str(data["id"]), str(data["reason"]))
        except (ValueError, TypeError, KeyError):
            return None


def drift_detected(texts: Mapping[str, str]) -> bool | None:
    """Whether any replica reports drift in its /metrics text; None when no replica reported the gauge at all
    (none answered, or none has a full window yet), which is no evidence either way."""
    seen = False
    for replica, text in texts.items():
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == DRIFT_GAUGE:
                        seen = True
                        if sample.value >= 1:
                            return True
        except ValueError as exc:  # a garbled exposition counts as a replica that did not answer
            log.warning("cannot parse /metrics of %s: %s", replica, exc)
    return False if seen else None


def scrape_texts(replicas: Sequence[str], timeout_s: float = 5.0) -> dict[str, str]:
    """The /metrics text of every replica that answers (base URLs, e.g. ReplicaScraper.replicas())."""
    out: dict[str, str] = {}
    for base in replicas:
        try:
            response = httpx.get(base.rstrip("/") + "/metrics", timeout=timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("drift watch cannot read %s/metrics: %s", base, type(exc).__name__)
            continue
        out[base] = response.text
    return out


class DriftWatch:
    """Counts consecutive drifted checks and starts one retraining per cooldown. Not thread-safe: one
    controller loop calls it."""

    def __init__(
        self,
        store: TagStore,
        launcher: Launcher,
        *,
        checks: int,
        check_s: float,
        cooldown_s: float,
    ) -> None:
        if checks < 1:
            raise ConfigError("retrain_drift_checks must be at least 1", field="retrain_drift_checks")
        self.store = store
        self.launcher = launcher
        self.checks = checks
        self.check_s = check_s
        self.cooldown_s = cooldown_s
        self.streak = 0
        self.last_check_at: float | None = None
        self.last: RetrainRecord | None = None
        self._loaded = False
        self.triggered = 0
        self.launch_failures = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls, settings: ControllerSettings, store: TagStore, launcher: Launcher | None = None
    ) -> DriftWatch:
        """The watch the controller runs (its launcher from `retrain_launcher` unless given)."""
        return cls(
            store,
            launcher or launcher_from_settings(settings),
            checks=settings.retrain_drift_checks,
            check_s=settings.retrain_check_s,
            cooldown_s=settings.retrain_cooldown_s,
        )

    def due(self, now: float) -> bool:
        """Whether the next check is due (the controller scrapes only then)."""
        return self.last_check_at is None or now - self.last_check_at >= self.check_s

    def tick(self, now: float, texts: Mapping[str, str]) -> bool:
        """The controller's call each tick with every replica's /metrics text: one check when due. True when
        a retraining was started. Registry and launch errors are logged, never raised (rollouts go on)."""
        if not self.due(now):
            return False
        try:
            return self.check(now, drift_detected(texts))
        except ModelOpsError as exc:
            log.warning("drift watch: %s", exc.message)
            return False

    def check(self, now: float, drifted: bool | None) -> bool:
        """Take one check (ignored when the last one is younger than `check_s`). `drifted` None means no
        replica reported: the streak neither grows nor breaks. True when a retraining was started."""
        if not self.due(now):
            return False
        self.last_check_at = now
        if drifted is None:
            return False
        if not drifted:
            if self.streak:
                log.info("drift watch: no drift after %d drifted check(s); streak reset", self.streak)
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < self.checks:
            log.info("drift watch: drift in %d/%d consecutive checks", self.streak, self.checks)
            return False
        last = self._last_retraining(now)
        if last is not None and now - last.at < self.cooldown_s:
            # still drifted: the streak stays full, so the first check after the cooldown starts the next one
            log.debug(
                "drift watch: in cooldown until %.0f (last retraining %s)", last.at + self.cooldown_s, last.id
            )
            return False
        return self._launch(now)

    def _last_retraining(self, now: float) -> RetrainRecord | None:
        """The last retraining: read from the tag once, and again when the cached one's cooldown is over (another
        controller may have started one meanwhile)."""
        if not self._loaded or self.last is None or now - self.last.at >= self.cooldown_s:
            stored = RetrainRecord.parse(self.store.model_tag(RETRAIN_TAG))
            self._loaded = True
            if stored is not None and (self.last is None or stored.at > self.last.at):
                self.last = stored
        return self.last

    def _launch(self, now: float) -> bool:
        reason = f"drift in {self.streak} consecutive checks, {self.check_s:g} s apart"
        try:
            launched = self.launcher.launch(reason, now)
        except RetrainLaunchFailed as exc:
            self.launch_failures += 1
            self.last_error = exc.message
            # a new streak must build up before the next attempt: a refusal is retried every few checks,
            # not hammered every tick
            self.streak = 0
            log.error(
                "drift watch: retraining not started (%s failure %d): %s",
                self.launcher.name,
                self.launch_failures,
                exc.message,
            )
            return False
        self.triggered += 1
        self.streak = 0
        self.last = RetrainRecord(round(now, 3), self.launcher.name, launched, reason)
        log.warning("drift watch: started retraining %s (%s): %s", launched, self.launcher.name, reason)
        try:
            self.store.set_model_tag(RETRAIN_TAG, self.last.render())
        except ModelOpsError as exc:  # this process still keeps the cooldown; a restart may not
            log.error(
                "drift watch: retraining %s started but not recorded in the registry: %s",
                launched,
                exc.message,
            )
        return True


# -- launchers --------------------------------------------------------------------------------------------------
class LocalLauncher:
    """Starts `modelops train` as a detached process of the local platform, as the trainer principal."""

    name = "local"

    def __init__(
        self,
        home: Path,
        tracking_uri: str,
        model_name: str,
        alias: str,
        *,
        command: Sequence[str] | None = None,
        spawn: Callable[..., Any] = subprocess.Popen,
    ) -> None:
        self.home = home.resolve()
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.command = list(command) if command is not None else self.train_command()
        self.spawn = spawn
        self.processes: list[Any] = []

    def train_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "modelops",
            "train",
            "--home",
            str(self.home),
            "--tracking-uri",
            self.tracking_uri,
            "--model-name",
            self.model_name,
            "--alias",
            self.alias,
            *RETRAIN_ARGS,
        ]

    def environment(self) -> dict[str, str]:
        """This process' environment with the trainer's identity instead of the controller's: the controller
        runs as the operator, and a trainer that held the operator's credential could move the champion."""
        from modelops.auth import TRAINER

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MODELOPS_REGISTRY_WRITE_")
            )
        }
        password = self.home / "credentials" / TRAINER
        key = self.home / "keys" / "signing-key.pem"
        if not password.is_file() or not key.is_file():
            raise RetrainLaunchFailed(
                f"no trainer credential or signing key under {self.home} (credentials/{TRAINER}, keys/signing-key.pem)"
            )
        env["MLFLOW_TRACKING_USERNAME"] = TRAINER
        env["MLFLOW_TRACKING_PASSWORD"] = password.read_text().strip()
        env["MODELOPS_SIGNING_KEY_PATH"] = str(key)
        return env

    def launch(self, reason: str, now: float) -> str:
        # reap the trainers that finished, so a long-running controller collects no zombies
        self.processes = [p for p in self.processes if p.poll() is None]
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"retrain-{int(now)}.log"
        try:
            with path.open("ab") as out:
                out.write(f"# drift-triggered retraining: {reason}\n".encode())
                out.flush()
                # its own session: the trainer outlives a controller restart and gets no terminal signals
                process = self.spawn(
                    self.command,
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise RetrainLaunchFailed(f"cannot start the trainer ({self.command[0]}): {exc}") from exc
        self.processes.append(process)
        log.info("retraining process %s, log %s", process.pid, path)
        return f"pid-{process.pid}"


class KubernetesLauncher:
    """Creates a Job from the training CronJob's job template through the Kubernetes API, with the pod's
    service-account token (no client library: two REST calls). The Role it needs: `get` on that one CronJob
    (resourceNames) and `create` on jobs, in its namespace."""

    name = "kubernetes"

    def __init__(
        self,
        cronjob: str,
        namespace: str,
        api_url: str,
        token_path: Path = SERVICE_ACCOUNT / "token",
        ca_path: Path | None = SERVICE_ACCOUNT / "ca.crt",
        timeout_s: float = 10.0,
    ) -> None:
        self.cronjob = cronjob
        self.namespace = namespace
        self.api_url = api_url.rstrip("/")
        self.token_path = token_path
        self.ca_path = ca_path
        self.timeout_s = timeout_s

    @classmethod
    def in_cluster(
        cls, cronjob: str, namespace: str | None = None, host: str = "kubernetes.default.svc", port: int = 443
    ) -> KubernetesLauncher:
        """The launcher inside a pod: the API address the kubelet injects, the pod's own namespace by default."""
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        if namespace is None:
            try:
                namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    "retrain_namespace is unset and this is not a pod with a service account",
                    field="retrain_namespace",
                ) from exc
        return cls(cronjob, namespace, f"https://{host}:{port}")

    def _client(self) -> httpx.Client:
        try:
            # read at every launch: projected service-account tokens are rotated by the kubelet
            token = self.token_path.read_text().strip()
        except OSError as exc:
            raise RetrainLaunchFailed(f"no service-account token at {self.token_path}: {exc}") from exc
        verify: ssl.SSLContext | bool = True
        if self.api_url.startswith("https://") and self.ca_path is not None and self.ca_path.is_file():
            verify = ssl.create_default_context(cafile=str(self.ca_path))
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            verify=verify,
            timeout=self.timeout_s,
        )

    def launch(self, reason: str, now: float) -> str:
        base = f"/apis/batch/v1/namespaces/{self.namespace}"
        with self._client() as client:
            cronjob = _checked(
                client, "GET", f"{base}/cronjobs/{self.cronjob}", None, f"read CronJob {self.cronjob}"
            )
            job = build_job(cronjob, now, reason)
            created = _checked(client, "POST", f"{base}/jobs", job, f"create Job {job['metadata']['name']}")
        return str(created.get("metadata", {}).get("name", job["metadata"]["name"]))


def _checked(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None, what: str
) -> dict[str, Any]:
    """One API call; RetrainLaunchFailed naming what was refused, with the API's own message."""
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise RetrainLaunchFailed(
            f"cannot {what}: Kubernetes API unreachable ({type(exc).__name__}: {exc})"
        ) from exc
    if response.status_code >= 300:
        try:
            message = str(response.json().get("message", response.text))
        except ValueError:
            message = response.text[:300]
        hint = " (the controller's Role must allow it)" if response.status_code in (401, 403) else ""
        raise RetrainLaunchFailed(f"cannot {what}: HTTP {response.status_code}{hint}: {message}")
    data = response.json()
    if not isinstance(data, dict):
        raise RetrainLaunchFailed(f"cannot {what}: unexpected answer from the Kubernetes API")
    return data


def build_job(cronjob: Mapping[str, Any], now: float, reason: str = "") -> dict[str, Any]:
    """The Job a drift-triggered retraining runs: the CronJob's job template (what `kubectl create job --from`
    copies), labelled `modelops.trigger=drift`, owned by the CronJob, the trainer's args extended by RETRAIN_ARGS."""
    meta = cronjob.get("metadata", {})
    template = copy.deepcopy(cronjob.get("spec", {}).get("jobTemplate", {}))
    suffix = f"-drift-{int(now)}"
    # Jobs label their pods with the Job's name, and a label value has at most 63 characters
    name = meta["name"][: 63 - len(suffix)].rstrip("-.") + suffix
    job_meta = template.get("metadata") or {}
    labels = {**job_meta.get("labels", {}), "modelops.trigger": TRIGGER}
    annotations = {
        **job_meta.get("annotations", {}),
        "cronjob.kubernetes.io/instantiate": "manual",
        "modelops.trigger/reason": reason[:1000],
    }
    spec = template.get("spec") or {}
    pod = spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), "modelops.trigger": TRIGGER}
    containers = pod.get("spec", {}).get("containers", [])
    if not containers:
        raise RetrainLaunchFailed(f"CronJob {meta['name']} has no containers in its job template")
    trainers = [c for c in containers if "train" in (c.get("args") or [])[:1] + (c.get("command") or [])]
    for container in trainers or containers[:1]:
        if "args" in container:
            container["args"] = [*container["args"], *RETRAIN_ARGS]
        elif "command" in container:
            container["command"] = [*container["command"], *RETRAIN_ARGS]
        else:  # args would replace the image's own CMD, which we cannot see from here
            raise RetrainLaunchFailed(
                f"the trainer container of CronJob {meta['name']} has neither command nor args"
            )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            # no blockOwnerDeletion: setting it needs update on cronjobs/finalizers, more than the Role grants
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                }
            ],
        },
        "spec": spec,
    }


def launcher_from_settings(settings: ControllerSettings) -> Launcher:
    """The launcher `retrain_launcher` names; ConfigError when what it needs is not configured."""
    if settings.retrain_launcher == "kubernetes":
        if not settings.retrain_cronjob:
            raise ConfigError("retrain_launcher=kubernetes needs retrain_cronjob", field="retrain_cronjob")
        return KubernetesLauncher.in_cluster(
            settings.retrain_cronjob,
            settings.retrain_namespace,
            settings.kubernetes_service_host,
            settings.kubernetes_service_port,
        )
    if settings.retrain_home is None:
        raise ConfigError(
            "retrain_launcher=local needs retrain_home (the local platform's home)", field="retrain_home"
        )
    return LocalLauncher(
        settings.retrain_home, settings.tracking_uri, settings.model_name, settings.model_alias
    )
