"""Alert rules pass promtool's checks and unit tests; ServiceMonitors and the dashboard render right."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, values_file

Render = Callable[..., list[dict[str, Any]]]
MONITORING = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
)
HERE = Path(__file__).resolve().parent


def rules_file(render: Render, directory: Path) -> Path:
    rule = next(o for o in render(values_file("default"), sets=MONITORING) if o["kind"] == "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False)


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: apt-get install prometheus (.ci/run does)")
    return path


def test_rules_pass_promtool_check(render: Render, promtool: str, tmp_path: Path) -> None:
    result = run_promtool(promtool, "check", "rules", str(rules_file(render, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_rules_fire_and_stay_quiet_as_their_unit_tests_say(
    render: Render, promtool: str, tmp_path: Path
) -> None:
    rules_file(render, tmp_path)
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = run_promtool(promtool, "test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_error_ratio_divides_errors_by_all_requests(render: Render) -> None:
    rule = next(o for o in render(values_file("default"), sets=MONITORING) if o["kind"] == "PrometheusRule")
    expr = next(
        r["expr"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "ModelServerErrorRatioHigh"
    )
    numerator, denominator = expr.split(" / ")
    assert 'status=~"5.."' in numerator and "status" not in denominator.split(">")[0]


def test_service_monitors_and_dashboard(render: Render) -> None:
    objects = render(
        values_file("default"), sets=(*MONITORING, "monitoring.serviceMonitor.labels.release=kps")
    )
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"rel-modelops-stack-model-server", "rel-modelops-stack-mlflow"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    mlflow = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("mlflow")
    )
    assert (
        "--expose-prometheus=/tmp/prometheus" in mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    dashboard = next(
        o for o in objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["modelops-model-server.json"])["panels"]
    titles = {p["title"] for p in panels}
    assert {
        "Throughput",
        "Latency of /predict",
        "Error ratio (5xx / all requests)",
        "Rows per request",
        "Micro-batch size",
        "Served model version",
        "Model loads, failures, alias lag",
    } == titles
    assert (
        json.loads((CHART / "files" / "dashboards" / "model-server.json").read_text())["uid"]
        == "modelops-model-server"
    )


def test_bundled_prometheus_config_and_grafana(render: Render, promtool: str, tmp_path: Path) -> None:
    objects = render(values_file("monitoring"))
    config = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-prometheus")
    )
    (tmp_path / "rules.yml").write_text(config["data"]["rules.yml"])
    prometheus_yml = config["data"]["prometheus.yml"].replace(
        "/etc/prometheus/rules.yml", str(tmp_path / "rules.yml")
    )
    (tmp_path / "prometheus.yml").write_text(prometheus_yml)
    result = run_promtool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout
    scrape = yaml.safe_load(prometheus_yml)["scrape_configs"]
    assert scrape[0]["dns_sd_configs"][0]["names"] == [
        "rel-modelops-stack-model-server-headless.mlops.svc.cluster.local"
    ]
    headless = next(
        o
        for o in objects
        if o["kind"] == "Service" and o["metadata"]["name"].endswith("model-server-headless")
    )
    assert headless["spec"]["clusterIP"] == "None"

    grafana = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-grafana")
    )
    shipped = json.loads((CHART / "files" / "dashboards" / "model-server.json").read_text())
    assert json.loads(grafana["data"]["modelops-model-server.json"]) == shipped
    assert "http://rel-modelops-stack-prometheus:9090" in grafana["data"]["datasources.yaml"]
    secret = next(
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-credentials")
    )
    import base64

    password = base64.b64decode(secret["data"]["grafana-admin-password"]).decode()
    assert len(password) >= 24 and password != "admin"
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-grafana")
    )
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "grafana-admin-password"
