"""A tiny kubelet for rendered manifests: runs a chart's workloads as podman containers on one network.

It honours what `helm template` rendered: images, command and args, env (values, secretKeyRef,
configMapKeyRef, fieldRef, $(VAR) references), volumes (emptyDir as tmpfs, PVC templates as named volumes,
Secrets and ConfigMaps as read-only folders of files),
runAsUser, readOnlyRootFilesystem, dropped capabilities, no-new-privileges, init containers, probes
(exec and httpGet, run inside the container on 127.0.0.1) and Services (as network aliases of the
containers their selector matches). What it cannot emulate, it refuses loudly (e.g. a Service whose
port differs from its target port). Before anything runs, the manifest wiring checks of tests/wiring.py (the
chart tests run them too) refuse a targetPort no container declares or a Secret/ConfigMap key that is missing.

Before any workload starts, it checks that a container on the network resolves and reaches another by its
network alias (every Service relies on that; tests/containers/network.py). Every wait is bounded by the workload's own settings (probe
allowances, activeDeadlineSeconds, the --wait-s a container declares) stretched for a busy machine, and a
wait that fails reports the container's log tail and a DNS + TCP check, from inside the network, of every
Service and URL the container refers to.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests import wiring
from tests.containers import network
from tests.containers.podman import BASE_IMAGE, PODMAN_OVERHEAD_S, podman

# A chart's allowances (probes, waits) assume a node with room to spare; here every pod of the release and the
# test itself share one machine (2 cores in CI), so the harness stretches them by this factor.
BUSY_MACHINE_FACTOR = 2.0
# `helm test` waits this long for a test pod unless given --timeout (helm's default, 5m0s).
HELM_TEST_TIMEOUT_S = 300.0
# Kubernetes' defaults for a probe that leaves these fields out.
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 1}
# The first retry delay of a failed Job pod (Kubernetes then doubles it; a first retry is all the harness needs).
JOB_RETRY_DELAY_S = 10.0
# Where a URL in a container's args or env points when it names no port.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,'\"]+")
# How often a long wait says what it waits for (on stderr: pytest shows it with a failure, or live with -s).
PROGRESS_EVERY_S = 30.0


class HarnessError(AssertionError):
    """The manifests cannot work as rendered; the message names the broken piece."""


@dataclass
class Pod:
    name: str
    workload: dict[str, Any]
    template: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template["metadata"].get("labels", {}))

    @property
    def spec(self) -> dict[str, Any]:
        return self.template["spec"]  # type: ignore[no-any-return]

    @property
    def kind(self) -> str:
        return self.workload["kind"]  # type: ignore[no-any-return]


def _pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def _exec_probe(name: str, command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """`command` run in container `name`; None when it did not finish within `timeout_s` (a busy machine)."""
    try:
        return podman("exec", name, *command, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _probe(probe: dict[str, Any], key: str) -> float:
    return float(probe.get(key, PROBE_DEFAULTS[key]))


def probe_allowance_s(probe: dict[str, Any] | None) -> float:
    """How long a probe may fail before Kubernetes acts: initialDelay + period x failureThreshold."""
    if probe is None:
        return 0.0
    return _probe(probe, "initialDelaySeconds") + _probe(probe, "periodSeconds") * _probe(
        probe, "failureThreshold"
    )


def declared_wait_s(container: dict[str, Any]) -> float | None:
    """How long a container says it waits for what it needs: `--wait-s N` (or `--wait-s=N`) in its args, or
    an env value named *_WAIT_S; the longest of them, or None."""
    found: list[float] = []
    args = [str(a) for a in container.get("args", [])]
    for i, arg in enumerate(args):
        if arg == "--wait-s" and i + 1 < len(args):
            found.append(float(args[i + 1]))
        elif arg.startswith("--wait-s="):
            found.append(float(arg.split("=", 1)[1]))
    for item in container.get("env", []):
        if item["name"].endswith("_WAIT_S") and "value" in item:
            found.append(float(item["value"]))
    return max(found) if found else None


@dataclass
class Cluster:
    """The rendered objects of one release, run on one podman network named after `prefix`."""

    objects: list[dict[str, Any]]
    prefix: str
    namespace: str = "default"
    containers: list[str] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)
    # an image with python3, for the network checks (the Debian base every other image is built on)
    tool_image: str = BASE_IMAGE
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # set when a part of the release fails (kept in _failure) or it is torn down: every wait stops at once
    _stopped: threading.Event = field(default_factory=threading.Event)
    _failure: BaseException | None = None
    # host folder holding the files of Secret and ConfigMap volumes, made when a pod first mounts one
    _files: Path | None = None
    _network_checked: bool = False

    def __post_init__(self) -> None:
        self.network = f"{self.prefix}-net"
        self.secrets: dict[str, dict[str, str]] = {}
        self.configmaps: dict[str, dict[str, str]] = {}
        for obj in self.objects:
            if obj["kind"] == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                data.update(obj.get("stringData") or {})
                self.secrets[obj["metadata"]["name"]] = data
            elif obj["kind"] == "ConfigMap":
                self.configmaps[obj["metadata"]["name"]] = dict(obj.get("data") or {})
        self.services = [o for o in self.objects if o["kind"] == "Service"]

    # -- objects --------------------------------------------------------------------------------------
    def workloads(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def is_hook(self, obj: dict[str, Any]) -> bool:
        return "helm.sh/hook" in obj["metadata"].get("annotations", {})

    def pods(self, obj: dict[str, Any]) -> list[Pod]:
        name = obj["metadata"]["name"]
        template = _pod_template(obj)
        if obj["kind"] in ("Deployment", "StatefulSet"):
            return [Pod(f"{name}-{i}", obj, template) for i in range(obj["spec"].get("replicas", 1))]
        return [Pod(name, obj, template)]

    def container_name(self, pod: Pod, container: dict[str, Any]) -> str:
        return f"{self.prefix}-{pod.name}-{container['name']}"

    def aliases(self, pod: Pod) -> list[str]:
        labels = pod.labels
        return [
            s["metadata"]["name"]
            for s in self.services
            if s["spec"].get("selector") and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
        ]

    def check_services(self) -> None:
        """Every Service selects pods and targets a port their containers declare (tests/wiring.py), on the
        same number: aliases cannot remap ports."""
        try:
            targets = wiring.check_services(self.objects)
        except wiring.WiringError as exc:
            raise HarnessError(str(exc)) from None
        for (name, port), number in targets.items():
            if number != port:
                raise HarnessError(
                    f"Service {name}: port {port} forwards to containerPort {number}; clients "
                    f"calling {name}:{port} would reach nothing in this harness (aliases cannot remap "
                    "ports), and other workloads of the chart use the Service port"
                )

    def check_wiring(self) -> None:
        """Before anything runs: `check_services`, and every Secret/ConfigMap reference of every workload
        (env, envFrom, volumes and their keys) resolves to an object of the release (tests/wiring.py; here the
        user's own Secrets are among `objects`, so every key is checked)."""
        self.check_services()
        try:
            wiring.check_references(self.objects)
        except wiring.WiringError as exc:
            raise HarnessError(str(exc)) from None

    # -- containers -----------------------------------------------------------------------------------
    def _env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            name = item["name"]
            if "value" in item:
                env[name] = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: env.get(m.group(1), m.group(0)),
                    str(item["value"]),
                )
                continue
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if ref["name"] not in self.secrets or ref["key"] not in self.secrets[ref["name"]]:
                    raise HarnessError(
                        f"{pod.name}/{container['name']}: env {name} refers to Secret "
                        f"{ref['name']!r} key {ref['key']!r}, which the release does not have"
                    )
                env[name] = self.secrets[ref["name"]][ref["key"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                try:
                    env[name] = self.configmaps[ref["name"]][ref["key"]]
                except KeyError:
                    raise HarnessError(
                        f"{pod.name}/{container['name']}: env {name} refers to ConfigMap "
                        f"{ref['name']!r} key {ref['key']!r}, which does not exist"
                    ) from None
            elif "fieldRef" in source:
                env[name] = {"metadata.name": pod.name, "metadata.namespace": self.namespace}.get(
                    source["fieldRef"]["fieldPath"], ""
                )
            else:
                raise HarnessError(
                    f"{pod.name}/{container['name']}: env {name} has a source the harness cannot "
                    f"resolve: {source}"
                )
        return env

    def _volume_args(self, pod: Pod, container: dict[str, Any]) -> list[str]:
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in pod.workload["spec"].get("volumeClaimTemplates", [])}
        args: list[str] = []
        for mount in container.get("volumeMounts", []):
            name, path = mount["name"], mount["mountPath"]
            if name in claims:
                volume = f"{self.prefix}-{name}-{pod.name}"
                with self._lock:
                    if volume not in self.volumes:
                        podman("volume", "create", volume)
                        self.volumes.add(volume)
                args += [
                    "-v",
                    f"{volume}:{path}:U",
                ]  # :U gives the volume to the container's user, like fsGroup
            elif name in volumes and "emptyDir" in volumes[name]:
                size = volumes[name]["emptyDir"].get("sizeLimit")
                # U: owned by the container's user, as fsGroup makes an emptyDir writable for the pod
                args += ["--tmpfs", f"{path}:rw,U" + (f",size={size.replace('i', '')}" if size else "")]
            elif name in volumes and ("secret" in volumes[name] or "configMap" in volumes[name]):
                args += ["-v", f"{self._key_files(pod, container, volumes[name])}:{path}:ro"]
            else:
                raise HarnessError(
                    f"{pod.name}/{container['name']}: volume {name!r} is neither an emptyDir, a Secret, a "
                    "ConfigMap nor a PVC template"
                )
        return args

    def _key_files(self, pod: Pod, container: dict[str, Any], volume: dict[str, Any]) -> Path:
        """A Secret or ConfigMap volume as a folder of files on the host: the keys it lists (or all), with their
        modes (defaultMode 0644), group-owned by the pod's fsGroup, as the kubelet projects them."""
        kind, source = (
            ("secret", volume["secret"]) if "secret" in volume else ("configMap", volume["configMap"])
        )
        ref = source["secretName"] if kind == "secret" else source["name"]
        data = (self.secrets if kind == "secret" else self.configmaps).get(ref)
        if data is None and not source.get("optional"):
            raise HarnessError(
                f"{pod.name}/{container['name']}: volume {volume['name']!r} mounts {kind} {ref!r}, which the "
                "release does not have"
            )
        data = data or {}
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        with self._lock:
            if self._files is None:
                self._files = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-volumes-"))
        folder = self._files / f"{pod.name}-{volume['name']}"
        folder.mkdir(mode=0o755, exist_ok=True)
        group = pod.spec.get("securityContext", {}).get("fsGroup")
        for item in items:
            if item["key"] not in data:
                raise HarnessError(
                    f"{pod.name}/{container['name']}: volume {volume['name']!r} wants key {item['key']!r} of "
                    f"{kind} {ref!r}, which does not have it"
                )
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            if group is not None:
                os.chown(target, 0, int(group))
        return folder

    def run_args(self, pod: Pod, container: dict[str, Any], *, detach: bool, alias: bool) -> list[str]:
        pod_sc = pod.spec.get("securityContext", {})
        sc = container.get("securityContext", {})
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup", user))
        if (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) and (user is None or user == 0):
            raise HarnessError(f"{pod.name}/{container['name']}: runAsNonRoot without a non-zero runAsUser")
        args = [
            "run",
            "--name",
            self.container_name(pod, container),
            "--network",
            self.network,
            "--label",
            f"modelops-e2e={self.prefix}",
            "--hostname",
            pod.name[:63],
        ]
        args += ["-d"] if detach else []
        if alias:
            for name in self.aliases(pod):
                args += ["--network-alias", name]
        if user is not None:
            args += ["--user", f"{user}:{group}"]
        if pod_sc.get("fsGroup") is not None:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            # no extra tmpfs on /run, /tmp, /var/tmp: only what the manifest mounts is writable, as in a pod
            args += ["--read-only", "--read-only-tmpfs=false"]
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            args.append("--cap-drop=ALL")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for key, value in self._env(pod, container).items():
            args += ["-e", f"{key}={value}"]
        args += self._volume_args(pod, container)
        if container.get("command"):
            args += ["--entrypoint", json.dumps(container["command"])]
        args.append(container["image"])
        args += [str(a) for a in container.get("args", [])]
        return args

    def _record(self, name: str) -> None:
        with self._lock:
            self.containers.append(name)

    def start_pod(self, pod: Pod) -> None:
        """Init containers one after another (each must exit 0 within its allowance), then the containers,
        detached."""
        for init in pod.spec.get("initContainers", []):
            name = self.container_name(pod, init)
            self._record(name)
            podman(*self.run_args(pod, init, detach=True, alias=False))
            self._wait_exit(pod, init, self._init_deadline_s(pod, init), f"init container {name}", attempts=1)
        for container in pod.spec["containers"]:
            name = self.container_name(pod, container)
            self._record(name)
            podman(
                *self.run_args(pod, container, detach=True, alias=pod.kind in ("Deployment", "StatefulSet"))
            )

    # -- the network ----------------------------------------------------------------------------------
    def create_network(self) -> None:
        """Create the release's network and check, before any workload runs on it, that a container there
        resolves another by its network alias and connects to it: every Service of the release is such an
        alias, and without name resolution each workload would wait out its whole deadline in silence."""
        with self._lock:
            if self._network_checked:
                return
            if podman("network", "exists", self.network, check=False).returncode != 0:
                podman("network", "create", self.network)
            problem = network.name_resolution_problem(self.network, self.prefix, self.tool_image)
            if problem:
                raise HarnessError(problem)
            self._network_checked = True

    def targets(self, pod: Pod, container: dict[str, Any]) -> list[tuple[str, int]]:
        """Where a container connects to, as far as its spec says: every Service its command, args or env
        name (each port; not the pod's own Services) and the host:port of every URL there (e.g. an external
        S3 endpoint)."""
        texts = [str(t) for t in [*container.get("command", []), *container.get("args", [])]]
        try:
            texts += list(self._env(pod, container).values())
        except HarnessError:
            texts += [str(item.get("value", "")) for item in container.get("env", [])]
        own = set(self.aliases(pod))
        found: dict[tuple[str, int], None] = {}
        for svc in self.services:
            name = svc["metadata"]["name"]
            named = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w-])")
            if name not in own and any(named.search(text) for text in texts):
                for port in svc["spec"]["ports"]:
                    found[(name, int(port["port"]))] = None
        for text in texts:
            for url in _URL.findall(text):
                parts = urlsplit(url)
                try:
                    port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0])
                except ValueError:
                    continue
                if parts.hostname and port:
                    found[(parts.hostname, port)] = None
        return list(found)

    def reachability(self, pod: Pod, container: dict[str, Any]) -> str:
        """A DNS + TCP check, from a new container on the release's network, of every target of `container`;
        never raises (it explains another failure)."""
        return network.reachability(self.network, self.prefix, self.tool_image, self.targets(pod, container))

    def explain(self, pod: Pod, container: dict[str, Any], name: str, lines: int = 40) -> str:
        """A failed wait's evidence: the container's log tail and the reachability of what it needs."""
        return (
            f"\n--- {name}: last {lines} log lines ---\n{self.logs(name, lines) or '(no output)'}"
            f"\n--- what it connects to, checked from inside the network ---\n{self.reachability(pod, container)}"
        )

    # -- state ----------------------------------------------------------------------------------------
    def logs(self, name: str, lines: int = 40) -> str:
        result = podman("logs", "--tail", str(lines), name, check=False)
        return (result.stdout + result.stderr).strip()

    def exit_code(self, name: str) -> int | None:
        state = podman(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, check=False
        ).stdout.split()
        if not state or state[0] in ("running", "created", "configured"):
            return None
        return int(state[1])

    def _exists(self, name: str) -> bool:
        return podman("container", "exists", name, check=False).returncode == 0

    def _pause(self, seconds: float) -> None:
        """Sleep, unless another part of the release failed or it is being torn down: then stop waiting."""
        if self._stopped.wait(seconds):
            if self._failure is not None:
                raise HarnessError(f"stopped waiting, another part of the release failed: {self._failure}")
            raise HarnessError("stopped waiting: the release is being torn down")

    def _guarded(self, step: Any, *args: Any) -> Any:
        """Run one step of `install` in a thread; its failure stops every other wait at once."""
        try:
            return step(*args)
        except BaseException as exc:
            with self._lock:
                if not self._stopped.is_set():
                    self._failure = exc
                    self._stopped.set()
            raise

    def _progress(self, what: str, began: float, deadline: float, name: str) -> None:
        last = self.logs(name, 1).replace("\n", " ")[:200]
        print(
            f"[kube] waiting for {what}: {time.monotonic() - began:.0f} s of {deadline - began:.0f} s; "
            f"last log line: {last or '(none)'}",
            file=sys.stderr,
            flush=True,
        )

    def _wait_exit(
        self, pod: Pod, container: dict[str, Any], deadline_s: float, what: str, *, attempts: int
    ) -> None:
        """Wait for a run-to-completion container to exit 0, restarting it after a failure until `attempts`
        runs failed (a Job's backoffLimit + 1), all within `deadline_s` from now."""
        name = self.container_name(pod, container)
        began = time.monotonic()
        deadline = began + deadline_s
        said = began
        while True:
            if not self._exists(name):
                raise HarnessError(f"{what}: its container {name} is gone")
            code = self.exit_code(name)
            if code == 0:
                return
            if code is not None:
                attempts -= 1
                if attempts <= 0:
                    raise HarnessError(f"{what} failed (exit {code}){self.explain(pod, container, name)}")
                self._pause(JOB_RETRY_DELAY_S)
                podman("start", name)
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{what} did not finish within {deadline_s:.0f} s{self.explain(pod, container, name)}"
                )
            if time.monotonic() - said > PROGRESS_EVERY_S:
                self._progress(what, began, deadline, name)
                said = time.monotonic()
            self._pause(1)

    def job_deadline_s(self, job: dict[str, Any], container: dict[str, Any]) -> float:
        """A Job's own bound: its activeDeadlineSeconds, as a cluster enforces it (counted there from the
        Job's creation, here from its container's start, so already lenient). Without one, each attempt's
        declared wait for its dependencies, stretched for a busy machine, times backoffLimit + 1 attempts."""
        spec = job["spec"]
        if spec.get("activeDeadlineSeconds") is not None:
            return float(spec["activeDeadlineSeconds"])
        wait = declared_wait_s(container)
        if wait is None:
            raise HarnessError(
                f"Job {job['metadata']['name']} has neither activeDeadlineSeconds nor a declared wait "
                "(--wait-s): in a cluster it could hang forever, and the harness cannot tell how long to wait"
            )
        return wait * BUSY_MACHINE_FACTOR * (int(spec.get("backoffLimit", 6)) + 1)

    def _init_deadline_s(self, pod: Pod, init: dict[str, Any]) -> float:
        """An init container waits at most its declared --wait-s for what it needs, then does a little work;
        one that declares no wait gets the pod's startup allowance. Stretched for a busy machine."""
        wait = declared_wait_s(init)
        if wait is None:
            wait = max(
                (probe_allowance_s(c.get("startupProbe")) for c in pod.spec["containers"]), default=0.0
            )
        if not wait:
            raise HarnessError(
                f"{pod.name}/{init['name']}: an init container without a declared wait (--wait-s) in a pod "
                "without a startupProbe: the harness cannot tell how long it may take"
            )
        return wait * BUSY_MACHINE_FACTOR + PODMAN_OVERHEAD_S

    def wait_job(self, job: dict[str, Any], pod: Pod | None = None) -> None:
        """Wait for a Job's container to exit 0 (retrying up to backoffLimit) within `job_deadline_s`; when it
        fails or times out, the error holds its log tail and a DNS + TCP check of what it connects to."""
        pod = pod or self.pods(job)[0]
        container = pod.spec["containers"][0]
        self._wait_exit(
            pod,
            container,
            self.job_deadline_s(job, container),
            f"Job {job['metadata']['name']}",
            attempts=job["spec"].get("backoffLimit", 6) + 1,
        )

    def _port(self, container: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int):
            return port
        for item in container.get("ports", []):
            if item.get("name") == port:
                return int(item["containerPort"])
        raise HarnessError(f"container {container['name']}: probe port {port!r} is not a declared port name")

    def probe(self, pod: Pod, container: dict[str, Any], probe: dict[str, Any]) -> tuple[bool, str]:
        """Run a probe inside the container: exec as is, httpGet on 127.0.0.1 (the pod's own address)."""
        name = self.container_name(pod, container)
        timeout = _probe(probe, "timeoutSeconds")
        if "exec" in probe:
            result = _exec_probe(name, list(probe["exec"]["command"]), timeout + PODMAN_OVERHEAD_S)
            if result is None:  # as Kubernetes counts a probe past its timeoutSeconds: failed, tried again
                return (
                    False,
                    f"exec {probe['exec']['command'][0]} timed out after {timeout + PODMAN_OVERHEAD_S:g} s",
                )
            return result.returncode == 0, (result.stdout + result.stderr).strip()[:400]
        http = probe["httpGet"]
        url = f"http://127.0.0.1:{self._port(container, http['port'])}{http.get('path', '/')}"
        script = (
            "import sys, urllib.request, urllib.error\n"
            f"try:\n r = urllib.request.urlopen({url!r}, timeout={timeout}); print(r.status, r.read()[:300])\n"
            "except urllib.error.HTTPError as e:\n print(e.code, e.read()[:300]); sys.exit(1)\n"
            "except Exception as e:\n print(type(e).__name__, e); sys.exit(1)\n"
        )
        result = _exec_probe(name, ["python3", "-c", script], timeout + PODMAN_OVERHEAD_S)
        if result is None:
            return False, f"GET {url}: timed out after {timeout + PODMAN_OVERHEAD_S:g} s"
        return result.returncode == 0, f"GET {url}: {(result.stdout + result.stderr).strip()[:400]}"

    def wait_ready(self, pod: Pod) -> None:
        """Each container passes its startup probe, then its readiness probe, within the probes' own
        allowances (initialDelay + period x failureThreshold) stretched for a busy machine: startup within its
        allowance, readiness within startup + readiness allowance (a model server turns ready only after
        polling for and loading a model, which its startup allowance also covers). Counted from when the
        harness starts waiting: in `install` that is after the Jobs the pod depends on have finished."""
        began = time.monotonic()
        for container in pod.spec["containers"]:
            name = self.container_name(pod, container)
            allowance = 0.0
            for kind in ("startupProbe", "readinessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                allowance += probe_allowance_s(probe) * BUSY_MACHINE_FACTOR
                deadline, said = began + allowance, time.monotonic()
                while True:
                    code = self.exit_code(name)
                    if code is not None:
                        raise HarnessError(
                            f"{name} exited with {code} before its {kind} passed"
                            + self.explain(pod, container, name)
                        )
                    ok, last = self.probe(pod, container, probe)
                    if ok:
                        break
                    if time.monotonic() > deadline:
                        raise HarnessError(
                            f"{name}: {kind} still failing after {allowance:.0f} s (its probes' allowance x "
                            f"{BUSY_MACHINE_FACTOR:g} for a busy machine); last: {last}"
                            + self.explain(pod, container, name)
                        )
                    if time.monotonic() - said > PROGRESS_EVERY_S:
                        self._progress(f"{name} {kind} (last: {last[:120]})", began, deadline, name)
                        said = time.monotonic()
                    self._pause(_probe(probe, "periodSeconds"))

    # -- the release ----------------------------------------------------------------------------------
    def install(self) -> None:
        """Like `helm install`: every non-hook workload at once, then post-install hooks by weight; wait for
        Jobs to complete and for every long-running container to pass its probes. The first failure stops
        every other wait and is raised."""
        self.check_wiring()
        self.create_network()
        long_running = [
            p for kind in ("StatefulSet", "Deployment") for w in self.workloads(kind) for p in self.pods(w)
        ]
        jobs = [j for j in self.workloads("Job") if not self.is_hook(j)]
        hooks = sorted(
            (
                j
                for j in self.workloads("Job")
                if self.is_hook(j) and "post-install" in j["metadata"]["annotations"]["helm.sh/hook"]
            ),
            key=lambda j: int(j["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
        )
        pool = ThreadPoolExecutor(max_workers=16)
        try:
            started = [pool.submit(self._guarded, self.start_pod, p) for p in long_running]
            job_started = [pool.submit(self._guarded, self.start_pod, self.pods(j)[0]) for j in jobs]
            for hook in hooks:
                self.start_pod(self.pods(hook)[0])
                self.wait_job(hook)
            stateful = [p for p in long_running if p.kind == "StatefulSet"]
            # data stores first: a crashing database is reported at once, not as a Job that never finishes
            for future in [pool.submit(self._guarded, self.wait_ready, p) for p in stateful]:
                future.result()
            for job, future in zip(jobs, job_started, strict=True):
                future.result()
                self.wait_job(job)
            for future in started:
                future.result()
            for future in [
                pool.submit(self._guarded, self.wait_ready, p) for p in long_running if p not in stateful
            ]:
                future.result()
        except BaseException:
            self._stopped.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    def run_helm_tests(self) -> list[str]:
        """`helm test`: run every Pod with the test hook to completion within helm's default timeout (stretched
        for a busy machine); each must exit 0."""
        passed = []
        for obj in self.workloads("Pod"):
            if "test" not in obj["metadata"].get("annotations", {}).get("helm.sh/hook", ""):
                continue
            pod = Pod(obj["metadata"]["name"], obj, {"metadata": obj["metadata"], "spec": obj["spec"]})
            container = pod.spec["containers"][0]
            self._record(self.container_name(pod, container))
            podman(*self.run_args(pod, container, detach=True, alias=False))
            self._wait_exit(
                pod,
                container,
                HELM_TEST_TIMEOUT_S * BUSY_MACHINE_FACTOR,
                f"helm test pod {pod.name}",
                attempts=1,
            )
            passed.append(pod.name)
        return passed

    def run_job_from_cronjob(self, cronjob: dict[str, Any], name: str) -> None:
        """`kubectl create job --from=cronjob/...`: one run of the CronJob's template, waited for."""
        job = {"kind": "Job", "metadata": {"name": name}, "spec": cronjob["spec"]["jobTemplate"]["spec"]}
        pod = Pod(name, job, _pod_template(cronjob))
        self.start_pod(pod)
        self.wait_job(job, pod)

    def restart(self, pod: Pod) -> None:
        for container in pod.spec["containers"]:
            podman("restart", self.container_name(pod, container))
        self.wait_ready(pod)

    def teardown(self) -> None:
        self._stopped.set()
        for name in reversed(self.containers):
            podman("rm", "-f", "-t", "5", name, check=False)
        leftover = podman(
            "ps", "-aq", "--filter", f"label=modelops-e2e={self.prefix}", check=False
        ).stdout.split()
        if leftover:
            podman("rm", "-f", *leftover, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)
        podman("network", "rm", "-f", self.network, check=False)
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)

    def dump_logs(self) -> str:
        return "\n\n".join(f"=== {name} ===\n{self.logs(name, 30)}" for name in self.containers)
