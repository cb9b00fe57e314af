"""Policies every rendered workload must follow: probes, resources, security, images, labels, secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import CI_VALUES, containers, find, pod_spec, pod_template, values_file, workloads

Render = Callable[..., list[dict[str, Any]]]
LONG_RUNNING = {"Deployment", "StatefulSet"}
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
USERINFO_WITH_PASSWORD = re.compile(r"://[^/@:\s]+:[^/@\s]+@")
# What the credentials Secret holds with every component in the chart and no existingSecret.
GENERATED_KEYS = {
    "admin-token",
    "postgres-password",
    "minio-root-user",
    "minio-root-password",
    "minio-mlflow-user",
    "minio-mlflow-password",
    "mlflow-admin-password",
    "mlflow-flask-secret-key",
    "mlflow-trainer-password",
    "mlflow-model-server-password",
    "mlflow-operator-password",
    "ui-session-secret",
}


@pytest.fixture(params=CI_VALUES, ids=lambda p: p.stem)
def objects(request: pytest.FixtureRequest, render: Render) -> list[dict[str, Any]]:
    return render(request.param)


def test_every_container_has_resources_and_a_locked_down_security_context(
    objects: list[dict[str, Any]],
) -> None:
    for obj in workloads(objects):
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        # only the rollout controller gets a token: it creates drift retraining Jobs (test_controller.py)
        controller = pod_template(obj)["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"
        assert spec["automountServiceAccountToken"] is controller, where
        for c in containers(obj):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert sc.get("runAsUser", spec["securityContext"].get("runAsUser", 0)) != 0, (where, c["name"])
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (where, c["name"], part)
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), (where, c["name"])


def test_long_running_containers_have_probes(objects: list[dict[str, Any]]) -> None:
    for obj in workloads(objects):
        if obj["kind"] not in LONG_RUNNING:
            continue
        for c in containers(obj, init=False):
            assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c), (
                obj["metadata"]["name"],
                c["name"],
            )


def test_images_are_pinned(objects: list[dict[str, Any]]) -> None:
    for obj in workloads(objects):
        for c in containers(obj):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, c["image"]


def test_labels_selectors_and_checksums(objects: list[dict[str, Any]]) -> None:
    standard = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    }
    for obj in objects:
        assert standard <= set(obj["metadata"]["labels"]), obj["metadata"]["name"]
        assert obj["metadata"]["name"].startswith("rel-modelops-stack"), obj["metadata"]["name"]
    for obj in workloads(objects):
        if obj["kind"] in LONG_RUNNING:
            assert set(obj["spec"]["selector"]["matchLabels"]) == {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }
            annotations = pod_template(obj)["metadata"]["annotations"]
            assert {"checksum/config", "checksum/secret"} <= set(annotations)
    for svc in (o for o in objects if o["kind"] == "Service"):
        assert set(svc["spec"]["selector"]) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }


def test_no_credential_in_plain_values(objects: list[dict[str, Any]]) -> None:
    assert not [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and any(CREDENTIAL_NAME.search(k) for k in o.get("data", {}))
    ]
    for obj in workloads(objects):
        for c in containers(obj):
            for env in c.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (c["name"], env["name"])
            for arg in map(str, c.get("args", [])):
                # no URI with a password in it (user:password@host), e.g. a database URI
                assert not USERINFO_WITH_PASSWORD.search(arg), (c["name"], arg)


def test_values_yaml_has_no_default_password() -> None:
    values = (Path(__file__).resolve().parents[2] / "charts" / "modelops-stack" / "values.yaml").read_text()
    assert not re.search(
        r"(?i)(password|token|secretKey|accessKey)\s*:\s*[\"']?[A-Za-z0-9]{6,}",
        values.replace("secretKey: password", "").replace("secretKey: admin-token", ""),
    )
    assert "minioadmin" not in values


def test_generated_secret_is_kept_and_strong(render: Render) -> None:
    import base64

    objects = render(values_file("default"))
    secret = find(objects, "Secret", "credentials")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == GENERATED_KEYS
    for key in GENERATED_KEYS - {"minio-root-user", "minio-mlflow-user"}:
        assert len(base64.b64decode(secret["data"][key])) >= 24, key
    again = find(render(values_file("default"), sets=("tmpSizeLimit=256Mi",)), "Secret", "credentials")
    assert again["data"]["admin-token"] != secret["data"]["admin-token"]  # random, not a fixed default


def test_existing_secrets_replace_generated_ones(render: Render) -> None:
    external = values_file("external")
    objects = render(external)
    assert not [o for o in objects if o["kind"] == "Secret"]
    server = find(objects, "Deployment", "model-server")
    token = next(e for e in containers(server)[0]["env"] if e["name"] == "MODELOPS_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "modelops-admin", "key": "token"}


def test_node_ports_default_to_the_seed_and_are_omitted_for_cluster_ip(render: Render) -> None:
    objects = render(values_file("default"))
    ports = {
        o["metadata"]["name"]: o["spec"]["ports"][0].get("nodePort")
        for o in objects
        if o["kind"] == "Service"
    }
    assert ports["rel-modelops-stack-model-server"] == 30081
    assert ports["rel-modelops-stack-mlflow"] == 30082
    assert ports["rel-modelops-stack-minio-console"] == 30083
    minimal = render(values_file("minimal"))
    assert all("nodePort" not in o["spec"]["ports"][0] for o in minimal if o["kind"] == "Service")


def test_model_server_rolls_out_without_losing_capacity(render: Render) -> None:
    server = find(render(values_file("default")), "Deployment", "model-server")
    assert server["spec"]["replicas"] == 2
    assert server["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    readiness = containers(server)[0]["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"


def test_training_cronjob_and_on_install_job(render: Render) -> None:
    objects = render(values_file("default"))
    cron = next(o for o in objects if o["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["suspend"] is False
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
    args = containers(cron)[0]["args"]
    assert args[0] == "train" and "--promote=auto" in args
    initial = [
        o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("training-initial")
    ]
    assert len(initial) == 1
    params = render(
        values_file("default"), sets=("training.params.C=0.5", "training.algorithm=random_forest")
    )
    assert "--param=C=0.5" in containers(next(o for o in params if o["kind"] == "CronJob"))[0]["args"]


def test_bucket_and_schema_migration(render: Render) -> None:
    objects = render(values_file("default"))
    assert not [
        o
        for o in objects
        if "helm.sh/hook" in o["metadata"].get("annotations", {})
        and o["metadata"]["annotations"]["helm.sh/hook"] != "test"
    ]  # nothing waits on hook ordering
    migrate = next(o for o in objects if o["kind"] == "Job" and "db-migrate" in o["metadata"]["name"])
    assert containers(migrate)[0]["args"][:2] == ["db", "upgrade"]
    mlflow = find(objects, "Deployment", "mlflow")
    init = pod_spec(mlflow)["initContainers"]
    assert init[0]["args"][:3] == ["create-bucket", "--bucket", "mlflow"]
    assert init[1]["args"][:2] == ["db", "wait"]
    args = containers(mlflow, init=False)[0]["args"]
    assert "--serve-artifacts" in args and "--artifacts-destination=s3://mlflow/" in args
    env = {e["name"]: e for e in containers(mlflow, init=False)[0]["env"]}
    assert (
        "rel-modelops-stack-mlflow.mlops.svc.cluster.local:5000"
        in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    )
    # only MLflow holds object-store credentials (MinIO itself aside)
    for obj in workloads(objects):
        names = {e["name"] for c in containers(obj) for e in c.get("env", [])}
        if "AWS_SECRET_ACCESS_KEY" in names:
            assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "mlflow"
