from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import tool_path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelops-stack"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def values_file(stem: str) -> Path:
    """One of the CI value sets by name, e.g. values_file("default")."""
    return CHART / "ci" / f"{stem}-values.yaml"


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
# Kinds from CRDs: the bundled Kubernetes schemas do not know them.
CRD_GROUPS = ("gateway.networking.k8s.io/", "monitoring.coreos.com/", "external-secrets.io/")


@pytest.fixture(scope="session")
def helm() -> Path:
    path = tool_path("helm")
    if path is None:
        pytest.skip("helm not found: run `python -m tests.tools` (make test does) or install helm")
    return path


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., list[dict[str, Any]]]:
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def _render(
        *values_files: Path, sets: tuple[str, ...] = (), namespace: str = "mlops"
    ) -> list[dict[str, Any]]:
        key = (values_files, sets, namespace)
        if key not in cache:
            args = ["template", "rel", str(CHART), "--namespace", namespace]
            for f in values_files:
                args += ["-f", str(f)]
            for s in sets:
                args += ["--set", s]
            result = run_helm(helm, *args)
            assert result.returncode == 0, result.stderr
            cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[key]

    return _render


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def containers(obj: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def find(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    return next(
        o
        for o in objects
        if o["kind"] == kind and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    )
