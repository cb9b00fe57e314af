"""A tiny kubelet for rendered manifests: runs a chart's workloads as podman containers on one network.

It honours what `helm template` rendered: images, command and args, env (values, secretKeyRef,
configMapKeyRef, fieldRef, $(VAR) references), volumes (emptyDir as tmpfs, PVC templates as named volumes),
runAsUser, readOnlyRootFilesystem, dropped capabilities, no-new-privileges, init containers, probes
(exec and httpGet, run inside the container on 127.0.0.1) and Services (as network aliases of the
containers their selector matches). What it cannot emulate, it refuses loudly (e.g. a Service whose
port differs from its target port, or a targetPort no container declares).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.containers.podman import podman


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


def _seconds(probe: dict[str, Any]) -> float:
    return float(
        probe.get("initialDelaySeconds", 0)
        + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    )


@dataclass
class Cluster:
    """The rendered objects of one release, run on one podman network named after `prefix`."""

    objects: list[dict[str, Any]]
    prefix: str
    namespace: str = "default"
    containers: list[str] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)
    started_at: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        """Every Service selects pods and targets a port their containers declare, on the same number."""
        long_running = [
            p for kind in ("Deployment", "StatefulSet") for w in self.workloads(kind) for p in self.pods(w)
        ]
        for svc in self.services:
            name = svc["metadata"]["name"]
            selected = [p for p in long_running if name in self.aliases(p)]
            if not selected:
                raise HarnessError(
                    f"Service {name}: its selector {svc['spec'].get('selector')} matches no pod"
                )
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                declared = {
                    (p.get("name"), p["containerPort"])
                    for pod in selected
                    for c in pod.spec["containers"]
                    for p in c.get("ports", [])
                }
                numbers = [num for pname, num in declared if target in (pname, num)]
                if not numbers:
                    raise HarnessError(
                        f"Service {name}: targetPort {target!r} matches no containerPort of the pods it selects "
                        f"(declared: {sorted(declared, key=str)})"
                    )
                if numbers[0] != port["port"]:
                    raise HarnessError(
                        f"Service {name}: port {port['port']} forwards to containerPort {numbers[0]}; clients "
                        f"calling {name}:{port['port']} would reach nothing in this harness (aliases cannot remap "
                        "ports), and other workloads of the chart use the Service port"
                    )

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
            else:
                raise HarnessError(
                    f"{pod.name}/{container['name']}: volume {name!r} is neither an emptyDir nor a "
                    "PVC template"
                )
        return args

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
        """Init containers one after another (each must succeed), then the containers, detached."""
        for init in pod.spec.get("initContainers", []):
            name = self.container_name(pod, init)
            self._record(name)
            result = podman(*self.run_args(pod, init, detach=False, alias=False), check=False, timeout=1800)
            if result.returncode != 0:
                raise HarnessError(f"init container {name} failed ({result.returncode}):\n{self.logs(name)}")
        for container in pod.spec["containers"]:
            name = self.container_name(pod, container)
            self._record(name)
            podman(
                *self.run_args(pod, container, detach=True, alias=pod.kind in ("Deployment", "StatefulSet"))
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

    def wait_job(self, job: dict[str, Any], pod: Pod | None = None) -> None:
        """Wait for a Job's container to exit 0 (retrying up to backoffLimit), within activeDeadlineSeconds."""
        pod = pod or self.pods(job)[0]
        container = pod.spec["containers"][0]
        name = self.container_name(pod, container)
        deadline = time.monotonic() + job["spec"].get("activeDeadlineSeconds", 600)
        attempts = job["spec"].get("backoffLimit", 6) + 1
        while True:
            code = self.exit_code(name)
            if code == 0:
                return
            if code is not None:
                attempts -= 1
                if attempts <= 0:
                    raise HarnessError(
                        f"Job {job['metadata']['name']} failed (exit {code}):\n{self.logs(name)}"
                    )
                time.sleep(2)
                podman("start", name)
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"Job {job['metadata']['name']} did not finish within its activeDeadlineSeconds:"
                    f"\n{self.logs(name)}"
                )
            time.sleep(1)

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
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            result = podman("exec", name, *probe["exec"]["command"], check=False, timeout=timeout + 10)
            return result.returncode == 0, (result.stdout + result.stderr).strip()[:400]
        http = probe["httpGet"]
        url = f"http://127.0.0.1:{self._port(container, http['port'])}{http.get('path', '/')}"
        script = (
            "import sys, urllib.request, urllib.error\n"
            f"try:\n r = urllib.request.urlopen({url!r}, timeout={timeout}); print(r.status, r.read()[:300])\n"
            "except urllib.error.HTTPError as e:\n print(e.code, e.read()[:300]); sys.exit(1)\n"
            "except Exception as e:\n print(type(e).__name__, e); sys.exit(1)\n"
        )
        result = podman("exec", name, "python3", "-c", script, check=False, timeout=timeout + 10)
        return result.returncode == 0, f"GET {url}: {(result.stdout + result.stderr).strip()[:400]}"

    def wait_ready(self, pod: Pod) -> None:
        """Each container passes its startup probe, then its readiness probe. The deadlines are the probes'
        own allowances counted from the container's start: startup (initialDelay + period x failureThreshold),
        then readiness on top of it; like a pod that never turns ready within what its probes allow."""
        for container in pod.spec["containers"]:
            name = self.container_name(pod, container)
            deadline = self.started_at.get(name, time.monotonic())
            for kind in ("startupProbe", "readinessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                deadline += _seconds(probe)
                last = ""
                while True:
                    if self.exit_code(name) is not None:
                        raise HarnessError(f"{name} exited with {self.exit_code(name)}:\n{self.logs(name)}")
                    ok, last = self.probe(pod, container, probe)
                    if ok:
                        break
                    if time.monotonic() > deadline:
                        raise HarnessError(
                            f"{name}: {kind} still failing past its allowance (startup + readiness "
                            f"period x failureThreshold from the container's start); last: {last}"
                            f"\n{self.logs(name)}"
                        )
                    time.sleep(probe.get("periodSeconds", 10))

    # -- the release ----------------------------------------------------------------------------------
    def install(self) -> None:
        """Like `helm install`: every non-hook workload at once, then post-install hooks by weight; wait for
        Jobs to complete and for every long-running container to pass its probes."""
        self.check_services()
        if podman("network", "exists", self.network, check=False).returncode != 0:
            podman("network", "create", self.network)
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
        with ThreadPoolExecutor(max_workers=16) as pool:
            started = [pool.submit(self.start_pod, p) for p in long_running + [self.pods(j)[0] for j in jobs]]
            for hook in hooks:
                self.start_pod(self.pods(hook)[0])
                self.wait_job(hook)
            stateful = [p for p in long_running if p.kind == "StatefulSet"]
            # data stores first: a crashing database is reported at once, not as a Job that never finishes
            for future in [pool.submit(self.wait_ready, p) for p in stateful]:
                future.result()
            for job in jobs:
                self.wait_job(job)
            for future in started:
                future.result()
            for future in [pool.submit(self.wait_ready, p) for p in long_running if p not in stateful]:
                future.result()

    def run_helm_tests(self) -> list[str]:
        """`helm test`: run every Pod with the test hook to completion; each must exit 0."""
        passed = []
        for obj in self.workloads("Pod"):
            if "test" not in obj["metadata"].get("annotations", {}).get("helm.sh/hook", ""):
                continue
            pod = Pod(obj["metadata"]["name"], obj, {"metadata": obj["metadata"], "spec": obj["spec"]})
            container = pod.spec["containers"][0]
            name = self.container_name(pod, container)
            self._record(name)
            result = podman(
                *self.run_args(pod, container, detach=False, alias=False), check=False, timeout=600
            )
            if result.returncode != 0:
                raise HarnessError(
                    f"helm test pod {pod.name} failed ({result.returncode}):\n{self.logs(name)}"
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
            self.started_at[self.container_name(pod, container)] = time.monotonic()
        self.wait_ready(pod)

    def teardown(self) -> None:
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

    def dump_logs(self) -> str:
        return "\n\n".join(f"=== {name} ===\n{self.logs(name, 30)}" for name in self.containers)
