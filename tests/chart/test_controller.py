"""The rollout controller in the chart: its pod, its one-CronJob Role, its network paths, and what turning it
(or drift retraining) off removes; the model server's rollout, prediction-log and console settings; the console's
session key in a Secret."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from pydantic_settings import BaseSettings

from modelops.settings import ControllerSettings, ServerSettings
from tests.chart.conftest import CI_VALUES, containers, find, pod_spec, pod_template, values_file, workloads
from tests.chart.test_production import INTERNET, OUTSIDE, allowed, pods_by_component
from tests.chart.test_trust_boundary import CREDENTIALS, env_of, secret_ref, validate
from tests.helm import HelmError, render_chart
from tests.unit.test_settings_documented import env_names

Render = Callable[..., list[dict[str, Any]]]
Settings = TypeVar("Settings", bound=BaseSettings)
CONTROLLER = "rel-modelops-stack-controller"
CRONJOB = "rel-modelops-stack-training"
HEADLESS = "rel-modelops-stack-model-server-headless"
NO_CONTROLLER = ("controller.enabled=false",)
NO_RETRAINING = ("retraining.onDrift.enabled=false",)
RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def component_of(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]  # type: ignore[no-any-return]


def controller_env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (container,) = containers(find(objects, "Deployment", "controller"))
    return env_of(container)


def token_pods(objects: list[dict[str, Any]]) -> set[str]:
    """Components whose pods get a service-account token (the default is true: absent counts as mounted)."""
    return {
        component_of(pod_template(o))
        for o in workloads(objects)
        if pod_spec(o).get("automountServiceAccountToken", True)
    }


def settings_from(
    cls: type[Settings], env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings a process builds from the plain (non-Secret) variables the chart gives its container."""
    import os

    for name in list(os.environ):
        if name.startswith(("MODELOPS_", "MLFLOW_")):
            monkeypatch.delenv(name)
    for name, item in env.items():
        if "value" in item:
            monkeypatch.setenv(name, str(item["value"]))
    return cls()


def values_with(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A values file (--set would pass decimals as strings, which the strict schema refuses)."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def controller_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"
        or o["metadata"]["name"] == CONTROLLER
    ]


# -- The controller's pod ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_controller_sets_only_variables_the_controller_reads(
    render: Render, values: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(values)
    env = controller_env(objects)
    unknown = set(env) - set(env_names(ControllerSettings))
    assert unknown == set(), f"the chart sets variables the controller never reads: {unknown}"
    assert {
        "MLFLOW_TRACKING_URI",
        "MODELOPS_MODEL_NAME",
        "MODELOPS_MODEL_ALIAS",
        "MODELOPS_CHALLENGER_ALIAS",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MODELOPS_REGISTRY_WRITE_USERNAME",
        "MODELOPS_REGISTRY_WRITE_PASSWORD",
        "MODELOPS_CONTROLLER_TARGETS_DNS",
        "MODELOPS_CONTROLLER_HEALTH_HOST",
        "MODELOPS_CONTROLLER_HEALTH_PORT",
    } <= set(env)
    # the values parse as the controller's settings (types and ranges)
    settings = settings_from(ControllerSettings, env, monkeypatch)
    assert settings.controller_health_host == "0.0.0.0" and settings.controller_health_port == 8090
    if settings.retrain_on_drift:  # (the container end-to-end values turn it off: no Kubernetes API there)
        assert {"MODELOPS_RETRAIN_LAUNCHER", "MODELOPS_RETRAIN_CRONJOB"} <= set(env)
        assert settings.retrain_launcher == "kubernetes"
    # reads as model-server, moves aliases as operator, from the same Secret as the servers
    assert env["MLFLOW_TRACKING_USERNAME"]["value"] == "model-server"
    assert env["MODELOPS_REGISTRY_WRITE_USERNAME"]["value"] == "operator"
    server = env_of(containers(find(objects, "Deployment", "model-server"))[0])
    assert secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == secret_ref(server["MLFLOW_TRACKING_PASSWORD"])
    assert secret_ref(env["MODELOPS_REGISTRY_WRITE_PASSWORD"])[1] == "mlflow-operator-password"
    assert env["MLFLOW_TRACKING_URI"] == server["MLFLOW_TRACKING_URI"]


def test_controller_targets_the_headless_service_and_the_training_cronjob(render: Render) -> None:
    objects = render(values_file("default"))
    env = controller_env(objects)
    headless = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == HEADLESS)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"]["app.kubernetes.io/component"] == "model-server"
    assert env["MODELOPS_CONTROLLER_TARGETS_DNS"]["value"] == f"{HEADLESS}:8000"  # same namespace: short name
    assert headless["spec"]["ports"][0]["port"] == 8000
    cron = next(o for o in objects if o["kind"] == "CronJob")
    assert env["MODELOPS_RETRAIN_CRONJOB"]["value"] == cron["metadata"]["name"] == CRONJOB
    assert env["MODELOPS_RETRAIN_NAMESPACE"]["value"] == "mlops"


def test_controller_pod_is_one_locked_down_replica_with_health_probes(render: Render) -> None:
    objects = render(values_file("default"))
    deployment = find(objects, "Deployment", "controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two controllers at once
    (container,) = containers(deployment)
    assert container["args"] == ["controller"]
    assert container["image"] == containers(find(objects, "Deployment", "model-server"))[0]["image"]
    assert container["ports"] == [{"name": "health", "containerPort": 8090, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    spec = pod_spec(deployment)
    assert spec["serviceAccountName"] == CONTROLLER
    assert spec["securityContext"]["runAsNonRoot"] is True
    annotations = pod_template(deployment)["metadata"]["annotations"]
    assert {"checksum/config", "checksum/secret"} <= set(annotations)


# -- Kubernetes API access: the controller only, one CronJob, create Jobs -----------------------------------
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_only_the_controller_pod_mounts_a_service_account_token(render: Render, values: Any) -> None:
    objects = render(values)
    assert token_pods(objects) == {"controller"}
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    assert accounts[CONTROLLER]["automountServiceAccountToken"] is False  # the pod asks for it itself
    users = {
        pod_spec(o)["serviceAccountName"]
        for o in workloads(objects)
        if component_of(pod_template(o)) != "controller"
    }
    assert CONTROLLER not in users  # nobody else runs as the controller


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_the_role_grants_get_on_the_training_cronjob_and_create_on_jobs_only(
    render: Render, values: Any
) -> None:
    objects = render(values)
    rbac = [o for o in objects if o["kind"] in RBAC_KINDS]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rbac) == [
        ("Role", CONTROLLER),
        ("RoleBinding", CONTROLLER),
    ]
    role = find(objects, "Role", "controller")
    assert role["metadata"]["namespace"] == "mlops"
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "resourceNames": [CRONJOB], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
    ]
    binding = find(objects, "RoleBinding", "controller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": "mlops"}]


def test_turning_the_controller_off_removes_all_of_it(render: Render) -> None:
    objects = render(values_file("default"), sets=NO_CONTROLLER)
    validate(objects)
    assert controller_objects(objects) == []
    assert not [o for o in objects if o["kind"] in RBAC_KINDS]
    assert token_pods(objects) == set()
    assert not [o for o in objects if o["metadata"]["name"] == HEADLESS]  # nobody reads it now
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        assert "controller" not in str(policy["spec"]), policy["metadata"]["name"]
    # the admin API's rollouts still get their defaults from values
    server = env_of(containers(find(objects, "Deployment", "model-server"))[0])
    assert server["MODELOPS_CHALLENGER_ALIAS"]["value"] == "challenger"


def test_turning_drift_retraining_off_removes_the_role_and_the_token(render: Render) -> None:
    objects = render(values_file("default"), sets=NO_RETRAINING)
    validate(objects)
    assert not [o for o in objects if o["kind"] in RBAC_KINDS]
    assert token_pods(objects) == set()
    deployment = find(objects, "Deployment", "controller")
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    assert "annotations" not in deployment["metadata"]  # no checkov skip for a token it does not have
    env = controller_env(objects)
    assert env["MODELOPS_RETRAIN_ON_DRIFT"]["value"] == "false"
    assert not {k for k in env if k.startswith("MODELOPS_RETRAIN_") and k != "MODELOPS_RETRAIN_ON_DRIFT"}
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == CONTROLLER)
    assert not [r for r in policy["spec"]["egress"] if "ipBlock" in str(r)]  # no Kubernetes API egress


def test_headless_service_exists_with_the_controller_or_bundled_monitoring(render: Render) -> None:
    def headless(*sets: str) -> bool:
        return any(o["metadata"]["name"] == HEADLESS for o in render(values_file("default"), sets=sets))

    assert headless()
    assert headless(*NO_CONTROLLER, "monitoring.bundled.enabled=true")
    assert not headless(*NO_CONTROLLER)


def test_rollout_and_retraining_values_reach_the_server_and_the_controller(
    render: Render, tmp_path: Path
) -> None:
    values = {
        "rollout": {
            "challengerAlias": "canary",
            "steps": "10,50,100",
            "intervalS": 120,
            "minRequests": 500,
            "maxP99Ratio": 2,
        },
        "retraining": {"onDrift": {"checks": 5, "cooldownS": 3600}},
        "controller": {"tickS": 2.5, "prometheusUrl": "http://prometheus.monitoring:9090"},
        "modelServer": {"routingHeader": "x-user-id"},
    }
    objects = render(values_file("default"), values_with(tmp_path, values))
    server = env_of(containers(find(objects, "Deployment", "model-server"))[0])
    controller = controller_env(objects)
    assert (
        server["MODELOPS_CHALLENGER_ALIAS"]["value"]
        == controller["MODELOPS_CHALLENGER_ALIAS"]["value"]
        == "canary"
    )
    assert server["MODELOPS_ROLLOUT_STEPS"]["value"] == "10,50,100"
    assert server["MODELOPS_ROLLOUT_INTERVAL_S"]["value"] == "120"
    assert server["MODELOPS_ROUTING_HEADER"]["value"] == "x-user-id"
    assert controller["MODELOPS_ROLLOUT_MIN_REQUESTS"]["value"] == "500"
    assert controller["MODELOPS_ROLLOUT_MAX_P99_RATIO"]["value"] == "2"
    assert controller["MODELOPS_RETRAIN_DRIFT_CHECKS"]["value"] == "5"
    assert controller["MODELOPS_RETRAIN_COOLDOWN_S"]["value"] == "3600"
    assert controller["MODELOPS_CONTROLLER_TICK_S"]["value"] == "2.5"
    assert controller["MODELOPS_CONTROLLER_PROMETHEUS_URL"]["value"] == "http://prometheus.monitoring:9090"
    assert "MODELOPS_CONTROLLER_PROMETHEUS_URL" not in controller_env(render(values_file("default")))


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("rollout.steps=5;25", "/rollout/steps"),
        ("rollout.challengerAlias=1st", "/rollout/challengerAlias"),
        ("rollout.maxP99Ratio=0.5", "/rollout/maxP99Ratio"),
        ("modelServer.predictionLog.sampleRate=2", "/modelServer/predictionLog/sampleRate"),
        ("modelServer.predictionLog.uri=s3://bucket/log", "/modelServer/predictionLog/uri"),
        ("retraining.onDrift.checks=0", "/retraining/onDrift/checks"),
        ("controller.replicas=2", "additional properties 'replicas' not allowed"),
    ],
)
def test_bad_rollout_values_are_refused(setting: str, where: str) -> None:
    with pytest.raises(HelmError) as refused:
        render_chart(set_values=(setting,))
    assert where in refused.value.stderr, refused.value.stderr


# -- Network --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", ["default", "production"])
def test_controller_network_paths(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_by_component(objects)
    controller = pods["controller"]
    assert allowed(policies, controller, pods["mlflow"], 5000)
    assert allowed(policies, controller, pods["model-server"], 8000)  # /metrics, also with restricted clients
    assert allowed(policies, controller, INTERNET, 53)
    for port in (443, 6443):  # the Kubernetes API server
        assert allowed(policies, controller, INTERNET, port)
    for other in ("postgresql", "minio", "training"):
        for port in pods[other]["ports"] or [8080]:
            assert not allowed(policies, controller, pods[other], port), other
    assert not allowed(policies, controller, INTERNET, 80)
    # nothing reaches the controller (the kubelet's probes are not subject to NetworkPolicies)
    sources: list[dict[str, Any]] = [OUTSIDE, INTERNET, *pods.values()]
    for source in sources:
        assert not allowed(policies, source, controller, 8090)
    # the API rule never reaches the cloud metadata service
    policy = next(o for o in policies if o["metadata"]["name"] == CONTROLLER)
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r.get("to", []) if "ipBlock" in p]
    assert blocks == [{"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}]


# -- Model server: prediction log, console, shutdown --------------------------------------------------------
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_model_server_settings_parse(render: Render, values: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(containers(find(render(values), "Deployment", "model-server"))[0])
    settings = settings_from(
        ServerSettings, env, monkeypatch
    )  # the chart's values are in the server's ranges
    assert settings.prediction_log_uri == "mlflow-artifacts:/predictions"
    assert settings.ui_enabled is True and settings.ui_public_read is False
    assert settings.rollout_steps == "5,25,50,100" and settings.challenger_alias == "challenger"
    assert settings.shadow_queue_requests == 1000 and settings.feedback_max_pending == 100_000


def test_prediction_log_is_off_when_the_server_cannot_write_through_mlflow(
    render: Render, tmp_path: Path
) -> None:
    def rate(*sets: str) -> str:
        env = env_of(
            containers(find(render(values_file("default"), sets=sets), "Deployment", "model-server"))[0]
        )
        return str(env["MODELOPS_PREDICTION_LOG_SAMPLE_RATE"]["value"])

    assert float(rate()) == 1.0
    quarter = values_with(tmp_path, {"modelServer": {"predictionLog": {"sampleRate": 0.25}}})
    server = find(render(values_file("default"), quarter), "Deployment", "model-server")
    assert env_of(containers(server)[0])["MODELOPS_PREDICTION_LOG_SAMPLE_RATE"]["value"] == "0.25"
    assert rate("modelServer.adminApi.registryWrite=false") == "0"  # it would only drop records
    # a file:// log needs no MLflow credential
    assert (
        float(
            rate("modelServer.adminApi.registryWrite=false", "modelServer.predictionLog.uri=file:///tmp/log")
        )
        == 1
    )


@pytest.mark.parametrize("stem", ["default", "production", "minimal"])
def test_grace_period_covers_prestop_drain_and_the_last_log_flush(render: Render, stem: str) -> None:
    server = find(render(values_file(stem)), "Deployment", "model-server")
    sleep = int(containers(server)[0]["lifecycle"]["preStop"]["exec"]["command"][1])
    # preStop, uvicorn's 30 s drain of in-flight requests, then up to 20 s writing the prediction log
    assert pod_spec(server)["terminationGracePeriodSeconds"] >= sleep + 30 + 20


def test_console_session_key_is_generated_kept_and_in_a_secret_only(render: Render) -> None:
    objects = render(values_file("default"))
    env = env_of(containers(find(objects, "Deployment", "model-server"))[0])
    assert "value" not in env["MODELOPS_UI_SESSION_SECRET"]
    assert secret_ref(env["MODELOPS_UI_SESSION_SECRET"]) == (CREDENTIALS, "ui-session-secret")
    secret = find(objects, "Secret", "credentials")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # kept across upgrades
    key = base64.b64decode(secret["data"]["ui-session-secret"]).decode()
    assert len(key) >= 48 and key != base64.b64decode(secret["data"]["admin-token"]).decode()
    for config_map in (o for o in objects if o["kind"] == "ConfigMap"):
        for name, text in config_map.get("data", {}).items():
            assert key not in text and "ui-session-secret" not in name, config_map["metadata"]["name"]
    # the controller and the trainers have no use for it
    holders = {
        component_of(pod_template(o))
        for o in workloads(objects)
        for c in containers(o)
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "ui-session-secret"
    }
    assert holders == {"model-server"}


@pytest.mark.parametrize(
    ("stem", "sets"),
    [
        ("existing-secrets", ()),
        ("external", ()),
        (
            "default",
            (
                "externalSecrets.enabled=true",
                "externalSecrets.secretStoreRef.name=vault",
                "externalSecrets.remoteKey=modelops/prod",
                "signing.existingSecret=model-signing",
                "signing.existingPublicConfigMap=model-signing-public",
            ),
        ),
        ("default", ("modelServer.ui.enabled=false",)),
    ],
)
def test_console_session_key_is_not_asked_of_user_managed_secrets(
    render: Render, stem: str, sets: tuple[str, ...]
) -> None:
    """With the admin token in the user's Secret (or External Secrets), the server derives the session key from
    it: the chart asks no new key of the user's store, so upgrades keep working."""
    objects = render(values_file(stem), sets=sets)
    env = env_of(containers(find(objects, "Deployment", "model-server"))[0])
    assert "MODELOPS_UI_SESSION_SECRET" not in env
    for obj in objects:
        if obj["kind"] == "Secret":
            assert "ui-session-secret" not in obj.get("data", {})
        if obj["kind"] == "ExternalSecret":
            assert "ui-session-secret" not in {d["secretKey"] for d in obj["spec"]["data"]}
