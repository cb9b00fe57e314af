from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helm import CHART as CHART  # re-exported, with ROOT: the chart tests import them from here
from tests.helm import ROOT as ROOT
from tests.helm import helm_path, render_chart

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def values_file(stem: str) -> Path:
    """One of the CI value sets by name, e.g. values_file("default")."""
    return CHART / "ci" / f"{stem}-values.yaml"


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
# Kinds from CRDs: the bundled Kubernetes schemas do not know them.
CRD_GROUPS = ("gateway.networking.k8s.io/", "monitoring.coreos.com/", "external-secrets.io/")


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary; skips the test when there is none."""
    return helm_path()


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., list[dict[str, Any]]]:
    """`render(*values_files, sets=(), namespace="mlops")`: tests.helm.render_chart for release `rel`, cached
    for the session (the same list for the same arguments: do not change it, copy it)."""
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def _render(
        *values_files: Path, sets: tuple[str, ...] = (), namespace: str = "mlops"
    ) -> list[dict[str, Any]]:
        key = (values_files, sets, namespace)
        if key not in cache:
            cache[key] = render_chart(values_files=values_files, set_values=sets, namespace=namespace)
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
