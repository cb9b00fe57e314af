"""The chart side of the trust boundary: MLflow's login and one principal per pod, the model-signing key pair
(private key in trainer pods only), MLflow's NetworkPolicy peers, the trainer's egress and MLflow's
bucket-scoped MinIO user."""

from __future__ import annotations

import base64
import configparser
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelops.auth import auth_config
from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    CRD_GROUPS,
    containers,
    find,
    pod_spec,
    pod_template,
    values_file,
    workloads,
)
from tests.chart.test_production import INTERNET, OUTSIDE, allowed, pods_by_component
from tests.helm import HelmError, render_chart

Render = Callable[..., list[dict[str, Any]]]
VALUE_SETS = ["default", "production", "existing-secrets"]
CREDENTIALS = "rel-modelops-stack-credentials"
AUTH_KEYS = {
    "mlflow-admin-password",
    "mlflow-flask-secret-key",
    "mlflow-trainer-password",
    "mlflow-model-server-password",
    "mlflow-operator-password",
}
TRAINING_DATA = ("training.data=https://data.example.com/train.csv",)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_ref(env: dict[str, Any]) -> tuple[str, str]:
    ref = env["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def component(obj: dict[str, Any]) -> str:
    return pod_template(obj)["metadata"]["labels"]["app.kubernetes.io/component"]  # type: ignore[no-any-return]


def trainers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in workloads(objects) if component(o) == "training"]


def validate(objects: list[dict[str, Any]]) -> None:
    """Every object against the oldest and newest Kubernetes schema, as test_render does for the CI sets."""
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        for version in ("1.25.0", "1.37.0"):
            kubernetes_validate.validate(obj, version, strict=True)


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def auth_secret(stem: str) -> str:
    return "modelops-mlflow-auth" if stem == "existing-secrets" else CREDENTIALS


# -- A. MLflow authentication -----------------------------------------------------------------------------
@pytest.mark.parametrize("stem", VALUE_SETS)
def test_mlflow_runs_its_basic_auth_app_with_a_config_file_and_secrets(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    mlflow = find(objects, "Deployment", "mlflow")
    server = containers(mlflow, init=False)[0]
    assert "--app-name=basic-auth" in server["args"]
    env = env_of(server)
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/modelops/mlflow-auth/basic_auth.ini"
    assert secret_ref(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (auth_secret(stem), "mlflow-admin-password")
    assert secret_ref(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == (auth_secret(stem), "mlflow-flask-secret-key")
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == "/etc/modelops/mlflow-auth")
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(mlflow)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "rel-modelops-stack-mlflow-auth"


@pytest.mark.parametrize("stem", [*VALUE_SETS, "external"])
def test_auth_config_points_at_the_backend_database_and_holds_no_secret(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    config_map = named(objects, "ConfigMap", "rel-modelops-stack-mlflow-auth")
    ini = configparser.ConfigParser()
    ini.read_string(config_map["data"]["basic_auth.ini"])
    backend = next(
        a.split("=", 1)[1]
        for a in containers(find(objects, "Deployment", "mlflow"), init=False)[0]["args"]
        if a.startswith("--backend-store-uri=")
    )
    # exactly what the local platform writes (one definition of the auth app's settings)
    expected = configparser.ConfigParser()
    expected.read_string(auth_config(backend))
    assert dict(ini["mlflow"]) == dict(expected["mlflow"])
    assert ini["mlflow"]["default_permission"] == "READ" and ini["mlflow"]["database_uri"] == backend
    assert "@" in backend and ":" not in backend.split("://", 1)[1].split("@", 1)[0]  # user, no password


@pytest.mark.parametrize("stem", VALUE_SETS)
def test_auth_bootstrap_runs_after_the_schema_wait(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    mlflow = find(objects, "Deployment", "mlflow")
    init = pod_spec(mlflow)["initContainers"]
    names = [c["name"] for c in init]
    assert names.index("auth-bootstrap") == names.index("wait-for-schema") + 1
    bootstrap = init[names.index("auth-bootstrap")]
    database_uri = init[names.index("wait-for-schema")]["args"][3]
    assert (
        bootstrap["args"]
        == [
            "auth",
            "bootstrap",
            "--database-uri",
            database_uri,
            "--model-name",
            "ModelOpsStudioModel",
            "--experiment",  # the trainer's (training.experiment): created owned by no principal, operator may write
            "modelops",
        ]
    )
    env = env_of(bootstrap)
    assert set(env) == {
        "PGPASSWORD",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MODELOPS_AUTH_TRAINER_PASSWORD",
        "MODELOPS_AUTH_MODEL_SERVER_PASSWORD",
        "MODELOPS_AUTH_OPERATOR_PASSWORD",
    }
    assert env["PGPASSWORD"] == env_of(init[names.index("wait-for-schema")])["PGPASSWORD"]
    secret = auth_secret(stem)
    assert {name: secret_ref(e) for name, e in env.items() if name != "PGPASSWORD"} == {
        "MLFLOW_AUTH_ADMIN_PASSWORD": (secret, "mlflow-admin-password"),
        "MODELOPS_AUTH_TRAINER_PASSWORD": (secret, "mlflow-trainer-password"),
        "MODELOPS_AUTH_MODEL_SERVER_PASSWORD": (secret, "mlflow-model-server-password"),
        "MODELOPS_AUTH_OPERATOR_PASSWORD": (secret, "mlflow-operator-password"),
    }
    model = render(values_file(stem), sets=("model.name=Churn", "training.experiment=churn-runs"))
    bootstrap = next(
        c for c in containers(find(model, "Deployment", "mlflow")) if c["name"] == "auth-bootstrap"
    )
    assert bootstrap["args"][-4:] == ["--model-name", "Churn", "--experiment", "churn-runs"]


@pytest.mark.parametrize("stem", VALUE_SETS)
def test_each_pod_authenticates_as_its_own_principal(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    secret = auth_secret(stem)
    expected = {
        "training": "trainer",
        "model-server": "model-server",
        "tests": "model-server",
        "controller": "model-server",  # reads as model-server; moves aliases as operator (test_controller.py)
    }
    seen = set()
    for obj in workloads(objects):
        for c in containers(obj):
            env = env_of(c)
            if "MLFLOW_TRACKING_USERNAME" not in env:
                assert "MLFLOW_TRACKING_PASSWORD" not in env, c["name"]
                continue
            user = env["MLFLOW_TRACKING_USERNAME"]["value"]
            assert expected[component(obj)] == user, (obj["metadata"]["name"], c["name"])
            assert secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == (secret, f"mlflow-{user}-password")
            seen.add(obj["kind"] + "/" + component(obj))
    # the on-install training Job too (`helm template` renders an install)
    assert seen == {
        "CronJob/training",
        "Job/training",
        "Deployment/model-server",
        "Deployment/controller",
        "Pod/tests",
    }


def test_model_servers_write_the_registry_as_operator_only_when_asked(render: Render) -> None:
    server = containers(find(render(values_file("default")), "Deployment", "model-server"))[0]
    env = env_of(server)
    assert env["MODELOPS_REGISTRY_WRITE_USERNAME"]["value"] == "operator"
    assert secret_ref(env["MODELOPS_REGISTRY_WRITE_PASSWORD"]) == (CREDENTIALS, "mlflow-operator-password")
    off = render(values_file("default"), sets=("modelServer.adminApi.registryWrite=false",))
    validate(off)
    server = containers(find(off, "Deployment", "model-server"))[0]
    assert not {"MODELOPS_REGISTRY_WRITE_USERNAME", "MODELOPS_REGISTRY_WRITE_PASSWORD"} & set(env_of(server))
    assert env_of(server)["MLFLOW_TRACKING_USERNAME"]["value"] == "model-server"
    # the operator's password then lives only where MLflow's users are created
    holders = {
        (o["metadata"]["name"], c["name"])
        for o in workloads(off)
        for c in containers(o)
        for e in c.get("env", [])
        if "valueFrom" in e
        and e["valueFrom"].get("secretKeyRef", {}).get("key") == "mlflow-operator-password"
    }
    # (and with the rollout controller, which moves the aliases a rollout decides)
    assert holders == {
        ("rel-modelops-stack-mlflow", "auth-bootstrap"),
        ("rel-modelops-stack-controller", "controller"),
    }
    no_controller = render(
        values_file("default"), sets=("modelServer.adminApi.registryWrite=false", "controller.enabled=false")
    )
    holders = {
        (o["metadata"]["name"], c["name"])
        for o in workloads(no_controller)
        for c in containers(o)
        for e in c.get("env", [])
        if "valueFrom" in e
        and e["valueFrom"].get("secretKeyRef", {}).get("key") == "mlflow-operator-password"
    }
    assert holders == {("rel-modelops-stack-mlflow", "auth-bootstrap")}


def test_mlflow_credentials_are_generated_strong_and_kept(render: Render) -> None:
    secret = find(render(values_file("default")), "Secret", "credentials")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) >= AUTH_KEYS
    values = {k: base64.b64decode(secret["data"][k]).decode() for k in AUTH_KEYS}
    assert all(len(v) >= 24 and v.isalnum() for v in values.values())
    assert len(set(values.values())) == len(values)  # one password per principal


@pytest.mark.parametrize("stem", ["existing-secrets", "external"])
def test_existing_secrets_mean_nothing_generated(render: Render, stem: str) -> None:
    objects = render(values_file(stem))
    assert not [o for o in objects if o["kind"] == "Secret"]
    referenced = {
        secret_ref(e)[0]
        for o in workloads(objects)
        for c in containers(o)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert CREDENTIALS not in referenced


# -- B. Model signing keys --------------------------------------------------------------------------------
def signing_volumes(obj: dict[str, Any], secret_name: str) -> list[dict[str, Any]]:
    """Volumes of a pod that carry the signing Secret, directly or projected."""
    found = []
    for volume in pod_spec(obj).get("volumes", []):
        if volume.get("secret", {}).get("secretName") == secret_name:
            found.append(volume)
        for source in volume.get("projected", {}).get("sources", []):
            if source.get("secret", {}).get("name") == secret_name:
                found.append(volume)
    return found


def test_generated_key_pair_is_kept_and_its_certificate_is_the_public_half(render: Render) -> None:
    objects = render(values_file("default"))
    secret = find(objects, "Secret", "signing")
    assert secret["metadata"]["name"] == "rel-modelops-stack-signing"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == {"private-key.pem", "certificate.pem"}
    key = serialization.load_pem_private_key(base64.b64decode(secret["data"]["private-key.pem"]), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["certificate.pem"]))
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    assert certificate.subject.rfc4514_string() == "CN=modelops-model-signing"
    public = find(objects, "ConfigMap", "signing")
    assert public["metadata"]["name"] == "rel-modelops-stack-signing-public"
    assert set(public["data"]) == {"certificate.pem"}
    assert x509.load_pem_x509_certificate(public["data"]["certificate.pem"].encode()) == certificate
    # random per install, not a key baked into the chart
    again = find(render(values_file("default"), sets=("tmpSizeLimit=256Mi",)), "Secret", "signing")
    assert again["data"]["private-key.pem"] != secret["data"]["private-key.pem"]


@pytest.mark.parametrize("values", [*CI_VALUES, "training-data"], ids=lambda p: getattr(p, "stem", p))
def test_only_trainer_pods_mount_the_private_key(render: Render, values: Any) -> None:
    objects = (
        render(values_file("default"), sets=TRAINING_DATA) if values == "training-data" else render(values)
    )
    secret_name = next(
        (
            v["secret"]["secretName"]
            for o in trainers(objects)
            for v in pod_spec(o)["volumes"]
            if "secret" in v
        ),
        None,
    )
    assert secret_name in {"rel-modelops-stack-signing", "modelops-signing", "model-signing"}
    for obj in workloads(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        volumes = signing_volumes(obj, secret_name)
        env_refs = [
            e
            for c in containers(obj)
            for e in c.get("env", [])
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret_name
        ] + [
            f
            for c in containers(obj)
            for f in c.get("envFrom", [])
            if f.get("secretRef", {}).get("name") == secret_name
        ]
        assert not env_refs, where
        if component(obj) != "training":
            assert not volumes, where
            continue
        assert volumes == [
            {
                "name": "signing-key",
                "secret": {
                    "secretName": secret_name,
                    "items": [{"key": "private-key.pem", "path": "private-key.pem", "mode": 0o440}],
                },
            }
        ], where
        trainer = containers(obj, init=False)[0]
        mount = next(m for m in trainer["volumeMounts"] if m["name"] == "signing-key")
        assert mount == {"name": "signing-key", "mountPath": "/etc/modelops/signing", "readOnly": True}
        assert (
            env_of(trainer)["MODELOPS_SIGNING_KEY_PATH"]["value"] == "/etc/modelops/signing/private-key.pem"
        )
    assert trainers(objects)


@pytest.mark.parametrize(
    ("stem", "config_map"),
    [
        ("default", "rel-modelops-stack-signing-public"),
        ("existing-secrets", "rel-modelops-stack-signing-public"),
        ("external", "model-signing-public"),
    ],
)
def test_model_servers_get_the_certificate_only(render: Render, stem: str, config_map: str) -> None:
    objects = render(values_file(stem))
    server = find(objects, "Deployment", "model-server")
    container = containers(server)[0]
    path = env_of(container)["MODELOPS_SIGNING_PUBLIC_KEY_PATH"]["value"]
    assert path == "/etc/modelops/signing-public/certificate.pem"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/modelops/signing-public")
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(server)["volumes"] if v["name"] == mount["name"])
    assert volume == {
        "name": mount["name"],
        "configMap": {"name": config_map, "items": [{"key": "certificate.pem", "path": "certificate.pem"}]},
    }
    rendered = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == config_map]
    if stem == "external":
        assert not rendered  # the user's own ConfigMap
    else:
        assert "BEGIN CERTIFICATE" in rendered[0]["data"]["certificate.pem"]
    if stem == "existing-secrets":
        given = (CHART / "ci" / "existing-secrets-values.yaml").read_text()
        assert rendered[0]["data"]["certificate.pem"].strip().splitlines()[1] in given


def test_an_existing_signing_secret_needs_the_public_certificate() -> None:
    with pytest.raises(HelmError) as missing:
        render_chart(set_values=("signing.existingSecret=model-signing",))
    assert (
        "signing.publicCertificate (or signing.existingPublicConfigMap) is required" in missing.value.stderr
    )
    with pytest.raises(HelmError) as invalid:
        render_chart(set_values=("signing.publicCertificate=not-a-pem",))
    assert "/signing/publicCertificate" in invalid.value.stderr


def test_checksums_follow_the_signing_key_and_the_auth_config(render: Render, tmp_path: Path) -> None:
    def annotations(objects: list[dict[str, Any]], kind: str, comp: str) -> dict[str, str]:
        return pod_template(find(objects, kind, comp))["metadata"]["annotations"]  # type: ignore[no-any-return]

    base = render(values_file("existing-secrets"))
    other_cert = tmp_path / "other-certificate.yaml"
    other_cert.write_text("signing:\n  publicCertificate: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n")
    rotated = render(values_file("existing-secrets"), other_cert)
    for kind, comp in (("Deployment", "model-server"), ("CronJob", "training")):
        assert (
            annotations(base, kind, comp)["checksum/signing"]
            != annotations(rotated, kind, comp)["checksum/signing"]
        )
        assert (
            annotations(base, kind, comp)["checksum/config"]
            == annotations(rotated, kind, comp)["checksum/config"]
        )
    # within one render every pod sees the same generated key pair
    default = render(values_file("default"))
    sums = {
        annotations(default, k, c)["checksum/signing"]
        for k, c in (("Deployment", "model-server"), ("CronJob", "training"))
    }
    assert len(sums) == 1
    # MLflow's auth config (the database URI) and MinIO's provisioning script are part of checksum/config
    moved = render(values_file("default"), sets=("postgresql.auth.database=registry",))
    assert (
        annotations(default, "Deployment", "mlflow")["checksum/config"]
        != annotations(moved, "Deployment", "mlflow")["checksum/config"]
    )
    bucket = render(values_file("default"), sets=("minio.bucket=artifacts",))
    assert (
        annotations(default, "StatefulSet", "minio")["checksum/config"]
        != annotations(bucket, "StatefulSet", "minio")["checksum/config"]
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_no_secret_value_in_any_config_map(render: Render, values: Path) -> None:
    objects = render(values)
    secrets = [
        base64.b64decode(v).decode()
        for o in objects
        # the scrape Secret holds only the username model-server, which is no secret (the bundled
        # Prometheus' config names it)
        if o["kind"] == "Secret" and not o["metadata"]["name"].endswith("-mlflow-scrape")
        for v in o.get("data", {}).values()
    ]
    config_text = [v for o in objects if o["kind"] == "ConfigMap" for v in o.get("data", {}).values()]
    for text in config_text:
        assert "PRIVATE KEY" not in text
        for secret in secrets:
            if "BEGIN CERTIFICATE" in secret:
                continue  # the certificate is public: the signing-public ConfigMap carries it on purpose
            assert secret not in text


# -- C. Network ---------------------------------------------------------------------------------------------
def mlflow_ingress_peers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    policy = named(objects, "NetworkPolicy", "rel-modelops-stack-mlflow")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    return rule["from"]  # type: ignore[no-any-return]


def own_components(peers: list[dict[str, Any]]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in peers
        if set(p) == {"podSelector"}
        and p["podSelector"]["matchLabels"].get("app.kubernetes.io/instance") == "rel"
    }


def test_mlflow_admits_only_the_platform_by_default(render: Render) -> None:
    objects = render(values_file("default"))
    peers = mlflow_ingress_peers(objects)
    assert own_components(peers) == {"model-server", "training", "db-migrate", "tests", "controller"}
    assert len(peers) == 5  # no ipBlock, no namespaceSelector: nobody else
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_by_component(objects)
    for client in ("model-server", "training", "tests", "controller"):
        assert allowed(policies, pods[client], pods["mlflow"], 5000), client
    for other in (OUTSIDE, INTERNET, pods["postgresql"], pods["minio"]):
        assert not allowed(policies, other, pods["mlflow"], 5000)
    with_prometheus = own_components(mlflow_ingress_peers(render(values_file("monitoring"))))
    assert with_prometheus == {"model-server", "training", "db-migrate", "tests", "controller", "prometheus"}
    without_controller = render(values_file("default"), sets=("controller.enabled=false",))
    assert own_components(mlflow_ingress_peers(without_controller)) == {
        "model-server",
        "training",
        "db-migrate",
        "tests",
    }


def test_mlflow_clients_from_values_are_added_as_given(render: Render, tmp_path: Path) -> None:
    clients = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}},
    ]
    values = tmp_path / "clients.yaml"
    values.write_text(json.dumps({"networkPolicy": {"mlflowClients": clients}}))
    objects = render(values_file("default"), values)
    validate(objects)
    peers = mlflow_ingress_peers(objects)
    assert peers[-2:] == clients
    assert own_components(peers) == {"model-server", "training", "db-migrate", "tests", "controller"}
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert allowed(policies, INTERNET, pods_by_component(objects)["mlflow"], 5000)  # the listed CIDR


def egress_to_ip(objects: list[dict[str, Any]], ip: str, port: int) -> bool:
    """Whether the trainer's egress rules let it open ip:port (an address outside the cluster)."""
    policy = named(objects, "NetworkPolicy", "rel-modelops-stack-training")
    address = ipaddress.ip_address(ip)
    for rule in policy["spec"]["egress"]:
        if rule.get("ports") and not any(p["port"] == port for p in rule["ports"]):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if (
                block
                and address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
            ):
                return True
    return False


def test_trainer_egress_reaches_the_internet_but_not_metadata_or_the_cluster(render: Render) -> None:
    objects = render(values_file("default"), sets=TRAINING_DATA)
    validate(objects)
    policy = named(objects, "NetworkPolicy", "rel-modelops-stack-training")
    data_rule = policy["spec"]["egress"][1]
    assert data_rule["to"] == [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": [
                    "169.254.0.0/16",
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                ],
            }
        }
    ]
    assert egress_to_ip(objects, "203.0.113.10", 443)  # public data over https
    assert not egress_to_ip(objects, "203.0.113.10", 5432)
    for ip in ("169.254.169.254", "10.96.0.1", "10.244.1.7", "172.18.0.2", "192.168.65.3"):
        assert not egress_to_ip(objects, ip, 443), ip
    # MLflow and DNS stay open
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_by_component(objects)
    assert allowed(policies, pods["training"], pods["mlflow"], 5000)
    assert allowed(policies, pods["training"], INTERNET, 53)
    assert not allowed(policies, pods["training"], pods["minio"], 9000)
    # without training data there is no internet rule at all
    assert not egress_to_ip(render(values_file("default")), "203.0.113.10", 443)


def test_trainer_egress_ranges_and_sources_come_from_values(render: Render, tmp_path: Path) -> None:
    values = tmp_path / "egress.yaml"
    values.write_text(
        json.dumps(
            {
                "training": {"data": "https://data.example.com/train.csv"},
                "networkPolicy": {
                    "trainerEgress": {
                        "exceptCidrs": ["169.254.0.0/16", "203.0.113.0/24"],
                        "clusterCidrs": ["10.244.0.0/16", "10.96.0.0/12"],
                    }
                },
            }
        )
    )
    objects = render(values)
    assert egress_to_ip(objects, "192.168.10.5", 443)  # a private source outside the cluster's ranges
    assert not egress_to_ip(objects, "10.96.0.10", 443) and not egress_to_ip(objects, "203.0.113.9", 443)
    listed = render(
        values_file("default"),
        sets=(*TRAINING_DATA, "networkPolicy.trainerDataSources[0].ipBlock.cidr=198.51.100.0/24"),
    )
    assert egress_to_ip(listed, "198.51.100.7", 443)
    assert not egress_to_ip(listed, "203.0.113.10", 443)  # listed sources replace "the internet"


def test_model_server_policy_is_unchanged(render: Render) -> None:
    objects = render(values_file("default"))
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "rel-modelops-stack-model-server"
    )
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]
    (egress,) = policy["spec"]["egress"]
    assert egress["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert own_components(egress["to"]) == {"mlflow"}


# -- C. MLflow's bucket-scoped MinIO user ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stem", "secret", "keys"),
    [
        (
            "default",
            CREDENTIALS,
            ("minio-root-user", "minio-root-password", "minio-mlflow-user", "minio-mlflow-password"),
        ),
        (
            "existing-secrets",
            "modelops-minio",
            ("root-user", "root-password", "mlflow-user", "mlflow-password"),
        ),
    ],
)
def test_mlflow_uses_its_own_minio_user_and_root_stays_in_minio(
    render: Render, stem: str, secret: str, keys: tuple[str, str, str, str]
) -> None:
    root_user, root_password, user, password = keys
    objects = render(values_file(stem))
    mlflow = find(objects, "Deployment", "mlflow")
    for c in containers(mlflow):
        env = env_of(c)
        if "AWS_ACCESS_KEY_ID" in env:
            assert secret_ref(env["AWS_ACCESS_KEY_ID"]) == (secret, user), c["name"]
            assert secret_ref(env["AWS_SECRET_ACCESS_KEY"]) == (secret, password), c["name"]
    assert {c["name"] for c in containers(mlflow) if "AWS_ACCESS_KEY_ID" in env_of(c)} == {
        "mlflow",
        "create-bucket",
    }
    minio = find(objects, "StatefulSet", "minio")
    server, provisioner = containers(minio, init=False)
    assert provisioner["name"] == "provisioner" and provisioner["image"] == server["image"]
    for c in (server, provisioner):
        assert secret_ref(env_of(c)["MINIO_ROOT_USER"]) == (secret, root_user)
        assert secret_ref(env_of(c)["MINIO_ROOT_PASSWORD"]) == (secret, root_password)
    assert secret_ref(env_of(provisioner)["MINIO_MLFLOW_USER"]) == (secret, user)
    assert secret_ref(env_of(provisioner)["MINIO_MLFLOW_PASSWORD"]) == (secret, password)
    # the root credentials: the MinIO pod only
    for obj in workloads(objects):
        for c in containers(obj):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("key") in (root_user, root_password):
                    assert component(obj) == "minio", (obj["metadata"]["name"], c["name"])


def test_minio_provisioner_creates_the_bucket_user_and_bucket_only_policy(render: Render) -> None:
    objects = render(values_file("default"), sets=("minio.bucket=artifacts",))
    minio = find(objects, "StatefulSet", "minio")
    provisioner = next(c for c in containers(minio) if c["name"] == "provisioner")
    assert provisioner["command"] == ["/bin/sh", "/etc/modelops/minio/provision.sh"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert provisioner[probe]["exec"]["command"] == ["/bin/sh", "-c", "[ -f /tmp/provisioner/ready ]"]
    mount = next(m for m in provisioner["volumeMounts"] if m["mountPath"] == "/etc/modelops/minio")
    volume = next(v for v in pod_spec(minio)["volumes"] if v["name"] == mount["name"])
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    )
    script = config["data"]["provision.sh"].splitlines()
    assert script[0] == "set -eu"
    steps = [line for line in script if line.split(" ")[0] in {"mc", "touch", "exec"} or "| mc " in line]
    assert steps == [
        'printf \'%s\\n%s\\n\' "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" | mc alias set --api s3v4 local http://127.0.0.1:9000 >/dev/null',
        "mc ready local",
        "mc mb --ignore-existing local/artifacts",
        "mc admin policy create local mlflow-artifacts-artifacts /etc/modelops/minio/mlflow-policy.json",
        'printf \'%s\\n%s\\n\' "$MINIO_MLFLOW_USER" "$MINIO_MLFLOW_PASSWORD" | mc admin user add local',
        'mc admin policy attach --user "$MINIO_MLFLOW_USER" local mlflow-artifacts-artifacts',
        'touch "$ready"',
        "exec sleep infinity",
    ]  # secrets reach mc on stdin, never as arguments
    policy = json.loads(config["data"]["mlflow-policy.json"])
    assert policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": ["arn:aws:s3:::artifacts"],
        },
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::artifacts/*"]},
    ]
    # the MLflow pod no longer creates the bucket with root credentials; it checks it with its own user
    init = pod_spec(find(objects, "Deployment", "mlflow"))["initContainers"]
    assert init[0]["args"][:3] == ["create-bucket", "--bucket", "artifacts"]


def test_external_object_store_keeps_its_own_keys(render: Render) -> None:
    objects = render(values_file("external"))
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    assert not [o for o in objects if o["metadata"]["name"].endswith("minio-provisioning")]
    mlflow = containers(find(objects, "Deployment", "mlflow"), init=False)[0]
    assert secret_ref(env_of(mlflow)["AWS_ACCESS_KEY_ID"]) == ("mlflow-s3", "access-key-id")
