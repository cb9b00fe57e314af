"""The chart renders, lints and validates for every CI value set, and bad values fail readably."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.conftest import CHART, CI_VALUES, CRD_GROUPS, ROOT
from tests.helm import HelmError, render_chart, run_helm

OLDEST, NEWEST = "1.25.0", "1.37.0"


def test_ci_value_sets_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml",
        "external-values.yaml",
        "minimal-values.yaml",
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(values: Path) -> None:
    result = run_helm("lint", "--strict", str(CHART), "-f", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_object_validates_strictly(
    render: Callable[..., list[dict[str, Any]]], values: Path, version: str
) -> None:
    objects = render(values)
    assert len(objects) > 5
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            assert obj["kind"] in {"HTTPRoute", "ServiceMonitor", "PrometheusRule", "ExternalSecret"}
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {exc.message} at {exc.path}"
            )


def test_kube_version_range_matches_what_is_validated() -> None:
    chart = (CHART / "Chart.yaml").read_text()
    assert 'kubeVersion: ">=1.25.0-0"' in chart


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("modelServer.replica=3", "additional properties 'replica' not allowed"),
        ("modelServer.replicas=two", "/modelServer/replicas': got string, want integer"),
        ("mlflow.service.type=Ingress", "/mlflow/service/type"),
        ("image.tag=latest", "/image/tag"),
        ("training.algorithm=svm", "/training/algorithm"),
    ],
)
def test_bad_values_fail_with_a_readable_message(setting: str, message: str) -> None:
    with pytest.raises(HelmError) as refused:
        render_chart(set_values=(setting,))
    assert message in refused.value.stderr, refused.value.stderr


def test_external_database_requires_its_secret() -> None:
    with pytest.raises(HelmError) as refused:
        render_chart(set_values=("postgresql.enabled=false", "externalDatabase.host=db"))
    assert "externalDatabase.existingSecret is required" in refused.value.stderr


def test_values_schema_is_generated_from_values_yaml() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "values_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["modelServer"]["properties"]["replicas"]["description"]
