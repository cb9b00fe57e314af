"""Alert rules pass promtool's checks and unit tests; ServiceMonitors and the dashboard render right; Prometheus
scrapes MLflow's /metrics (behind MLflow's login) as the read-only model-server principal."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, containers, find, pod_spec, pod_template, values_file
from tests.chart.test_trust_boundary import AUTH_KEYS, CREDENTIALS, validate

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
    assert "SUCCESS: 11 rules found" in result.stdout


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
        "Requests per version",
        "p99 latency per version",
        "Error ratio per version",
        "Rollout: challenger share of traffic",
        "Shadow agreement (challenger label = champion label)",
        "Input drift",
        "Prediction log",
        "Live accuracy (labels from /feedback)",
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
    assert "SUCCESS: 11 rules found" in result.stdout
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
    password = base64.b64decode(secret["data"]["grafana-admin-password"]).decode()
    assert len(password) >= 24 and password != "admin"
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-grafana")
    )
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "grafana-admin-password"


# -- Scraping MLflow as model-server ------------------------------------------------------------------------
SCRAPE_SECRET = "rel-modelops-stack-mlflow-scrape"
PASSWORD_KEY = "mlflow-model-server-password"
PASSWORD_FILE = PurePosixPath("/etc/prometheus/secrets/mlflow-password")
SERVICE_MONITOR = ("monitoring.serviceMonitor.enabled=true",)
BUNDLED = ("monitoring.bundled.enabled=true",)
EXTERNAL_SECRETS = (
    "externalSecrets.enabled=true",
    "externalSecrets.secretStoreRef.name=vault",
    "externalSecrets.remoteKey=modelops/prod",
    "signing.existingSecret=model-signing",
    "signing.existingPublicConfigMap=model-signing-public",
)
# The Secrets of the CI sets' users (mlflow.auth.existingSecret), with the keys the chart documents for them.
USER_SECRETS = {"modelops-mlflow-auth": AUTH_KEYS, "mlflow-auth": AUTH_KEYS}
# value set, --set values, the Secret that must hold the model-server password
SCRAPE_CASES = {
    "generated": ("default", SERVICE_MONITOR + BUNDLED, CREDENTIALS),
    "monitoring": ("monitoring", (), CREDENTIALS),
    "existing-secrets": ("existing-secrets", SERVICE_MONITOR + BUNDLED, "modelops-mlflow-auth"),
    "external": ("external", SERVICE_MONITOR + BUNDLED, "mlflow-auth"),
    "external-secrets-operator": ("default", SERVICE_MONITOR + BUNDLED + EXTERNAL_SECRETS, CREDENTIALS),
}


def render_case(render: Render, case: str) -> list[dict[str, Any]]:
    stem, sets, _ = SCRAPE_CASES[case]
    return render(values_file(stem), sets=sets)


def secret_keys(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> keys, for every Secret the release can rely on: the users' own, the rendered ones and
    the targets of ExternalSecrets."""
    keys = {name: set(k) for name, k in USER_SECRETS.items()}
    for obj in objects:
        if obj["kind"] == "Secret":
            keys[obj["metadata"]["name"]] = set(obj.get("data", {}))
        elif obj["kind"] == "ExternalSecret":
            keys[obj["spec"]["target"]["name"]] = {d["secretKey"] for d in obj["spec"]["data"]}
    return keys


def keys_named(value: Any, name: str) -> Iterator[Any]:
    """Every value under a mapping key `name`, anywhere in a parsed YAML document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == name:
                yield item
            yield from keys_named(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from keys_named(item, name)


@pytest.mark.parametrize("case", SCRAPE_CASES)
def test_service_monitor_scrapes_mlflow_as_model_server(render: Render, case: str) -> None:
    objects = render_case(render, case)
    password_secret = SCRAPE_CASES[case][2]
    monitors = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "ServiceMonitor"
    }
    (endpoint,) = monitors["mlflow"]["spec"]["endpoints"]
    auth = endpoint["basicAuth"]
    assert auth == {
        "username": {"name": SCRAPE_SECRET, "key": "username"},
        "password": {"name": password_secret, "key": PASSWORD_KEY},
    }
    available = secret_keys(objects)
    for ref in auth.values():
        assert ref["key"] in available.get(ref["name"], set()), ref
    scrape = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == SCRAPE_SECRET)
    assert scrape["metadata"]["namespace"] == monitors["mlflow"]["metadata"]["namespace"]
    assert {k: base64.b64decode(v).decode() for k, v in scrape["data"].items()} == {
        "username": "model-server"
    }
    assert "basicAuth" not in monitors["model-server"]["spec"]["endpoints"][0]  # its /metrics is open
    validate(objects)


def test_no_scrape_secret_without_service_monitors(render: Render) -> None:
    for stem in ("default", "existing-secrets"):
        objects = render(values_file(stem), sets=BUNDLED)
        assert not [o for o in objects if o["metadata"]["name"] == SCRAPE_SECRET]


@pytest.mark.parametrize("case", SCRAPE_CASES)
def test_bundled_prometheus_reads_the_mlflow_password_from_a_mounted_secret_key(
    render: Render, case: str
) -> None:
    objects = render_case(render, case)
    password_secret = SCRAPE_CASES[case][2]
    config = find(objects, "ConfigMap", "prometheus")
    jobs = {j["job_name"]: j for j in yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]}
    assert jobs["rel-modelops-stack-mlflow"]["basic_auth"] == {
        "username": "model-server",
        "password_file": str(PASSWORD_FILE),
    }
    assert "basic_auth" not in jobs["rel-modelops-stack-model-server"]

    deployment = find(objects, "Deployment", "prometheus")
    (container,) = containers(deployment)
    # a whole-directory mount without subPath, so the kubelet updates a rotated password in place
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(PASSWORD_FILE.parent))
    assert mount["readOnly"] is True and "subPath" not in mount
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[mount["name"]]["secret"] == {
        "secretName": password_secret,
        "items": [{"key": PASSWORD_KEY, "path": PASSWORD_FILE.name, "mode": 0o440}],
    }
    assert PASSWORD_KEY in secret_keys(objects)[password_secret]
    # that key is the only credential in the pod: no other Secret volume, no Secret in the environment
    assert [v for v in volumes.values() if "secret" in v or "projected" in v] == [volumes[mount["name"]]]
    assert not [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    annotations = pod_template(deployment)["metadata"]["annotations"]
    assert {"checksum/prometheus", "checksum/secret", "checksum/config"} <= set(annotations)
    validate(objects)


def test_prometheus_restarts_when_its_scrape_config_changes(render: Render) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        annotations = pod_template(find(objects, "Deployment", "prometheus"))["metadata"]["annotations"]
        return str(annotations["checksum/prometheus"])

    base = render(values_file("monitoring"))
    moved = render(values_file("monitoring"), sets=("mlflow.service.port=5001",))
    assert checksum(base) != checksum(moved)


def test_no_mlflow_password_in_any_config_map(render: Render) -> None:
    objects = render(values_file("monitoring"))
    credentials = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == CREDENTIALS)
    passwords = [base64.b64decode(credentials["data"][k]).decode() for k in sorted(AUTH_KEYS)]
    config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert find(objects, "ConfigMap", "prometheus") in config_maps
    for config_map in config_maps:
        for text in config_map.get("data", {}).values():
            assert not [p for p in passwords if p in text], config_map["metadata"]["name"]
    prometheus_yml = yaml.safe_load(find(objects, "ConfigMap", "prometheus")["data"]["prometheus.yml"])
    assert not list(keys_named(prometheus_yml, "password"))  # only password_file
