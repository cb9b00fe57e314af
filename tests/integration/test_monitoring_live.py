"""The chart's dashboard and alert rules against a live model server: every metric they use exists, and a
real Prometheus (Debian's package) scraping the server as the ServiceMonitor says gets data for every panel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART, values_file
from tests.helm import render_chart
from tests.integration.conftest import AUTH_HEADERS, train_version
from tests.support import Service, free_port, wait_for

RELEASE, NAMESPACE = "rel", "mlops"
SERVICE = f"{RELEASE}-modelops-stack-model-server"
METRIC = re.compile(r"\b(modelops_[a-z_]+)")


def render_monitoring() -> list[dict[str, Any]]:
    return render_chart(
        values_files=(values_file("default"),),
        set_values=(
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.serviceMonitor.interval=1s",
        ),
        namespace=NAMESPACE,
        release=RELEASE,
    )


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "files" / "dashboards" / "model-server.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


@pytest.fixture
def live_server(tracking_server: Service, model_name: str, start_server: Callable[..., Service]) -> str:
    server = start_server(tracking_server.uri, model_name)
    url: str = server.uri
    # a 5xx (no model yet), then a model, then traffic of every kind
    assert httpx.post(f"{url}/predict", json={"features": [1.0] * 30}).status_code == 503
    train_version(tracking_server.uri, model_name)
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "the model to load")
    return url


def traffic(url: str) -> None:
    """Answers (a full drift window of them), a bad request, and labels for some answers (live accuracy)."""
    with httpx.Client() as client:
        for i in range(70):
            client.post(
                f"{url}/predict", json={"instances": [[1.0] * 30] * 3}, headers={"X-Request-Id": f"t{i}"}
            )
        client.post(f"{url}/predict", json={"features": [1.0]})
        labels = [{"request_id": f"t{i}", "label": i % 2} for i in range(70)]
        assert client.post(f"{url}/feedback", json=labels, headers=AUTH_HEADERS).status_code == 200


def test_every_metric_of_the_dashboard_and_rules_exists(live_server: str) -> None:
    traffic(live_server)
    exposition = httpx.get(f"{live_server}/metrics").text
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    rule = next(o for o in render_monitoring() if o["kind"] == "PrometheusRule")
    used = set(METRIC.findall(" ".join(dashboard_queries())))
    used |= set(METRIC.findall(json.dumps(rule["spec"])))
    assert len(used) >= 9
    # exists only while a rollout runs: tests/integration/test_rollouts.py finds it on the replicas then
    during_rollouts = {"modelops_rollout_percent"}
    assert used - exposed - during_rollouts == set(), f"used but never exposed: {used - exposed}"


def test_prometheus_scrapes_like_the_service_monitor_and_panels_have_data(
    live_server: str, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not found: apt-get install prometheus (.ci/run does)")
    monitor = next(
        o for o in render_monitoring() if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == SERVICE
    )
    endpoint = monitor["spec"]["endpoints"][0]
    target = live_server.removeprefix("http://")
    config = {
        "global": {"scrape_interval": endpoint["interval"], "evaluation_interval": endpoint["interval"]},
        "scrape_configs": [
            {
                "job_name": SERVICE,
                "metrics_path": endpoint["path"],
                "scrape_interval": endpoint["interval"],
                # the labels the Prometheus operator puts on targets of this ServiceMonitor
                "static_configs": [
                    {"targets": [target], "labels": {"namespace": NAMESPACE, "service": SERVICE}}
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200, 30, "prometheus")
        deadline = time.monotonic() + 60
        missing: list[str] = []
        while time.monotonic() < deadline:
            traffic(live_server)
            missing = []
            for expr in dashboard_queries():
                if "modelops_rollout_percent" in expr:
                    continue  # data only while a rollout runs (tests/integration/test_rollouts.py reads it)
                query = expr.replace("$service", ".*").replace("$__rate_interval", "30s")
                result = httpx.get(api, params={"query": query}).json()
                assert result["status"] == "success", (query, result)
                if not result["data"]["result"]:
                    missing.append(query)
            if not missing:
                break
            time.sleep(2)
        assert missing == [], "dashboard queries without data:\n" + "\n".join(missing)
        up = httpx.get(api, params={"query": f'up{{service="{SERVICE}"}}'}).json()["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
