"""The rendered manifests are wired together for every value set, without a cluster or podman: Services reach
declared container ports, and every Secret/ConfigMap reference (env, envFrom, volumes and their keys,
ServiceMonitor credentials) resolves to a rendered object with that key or to a Secret the values say the user
provides. The same checks (tests/wiring.py) guard the container end-to-end harness before it starts anything;
the negative tests below break one piece of a real render and expect the message that names it."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import CI_VALUES, values_file
from tests.chart.test_monitoring import BUNDLED, EXTERNAL_SECRETS, SERVICE_MONITOR
from tests.chart.test_trust_boundary import CREDENTIALS
from tests.containers.kube import Cluster, HarnessError
from tests.helm import chart_values
from tests.wiring import WiringError, check_references, check_services, user_provided

Render = Callable[..., list[dict[str, Any]]]
Objects = list[dict[str, Any]]
PREFIX = "rel-modelops-stack"
MODEL_SERVER = f"Deployment {PREFIX}-model-server, container model-server"

# name -> (value files, --set values): the chart's defaults, every CI value set, and the combinations the
# monitoring tests use (ServiceMonitor credentials with the user's Secrets, External Secrets Operator)
CASES: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    "chart-defaults": ((), ()),
    **{path.stem.removesuffix("-values"): ((path,), ()) for path in CI_VALUES},
    "existing-secrets+monitoring": ((values_file("existing-secrets"),), SERVICE_MONITOR + BUNDLED),
    "external+monitoring": ((values_file("external"),), SERVICE_MONITOR + BUNDLED),
    "external-secrets-operator": (
        (values_file("default"),),
        SERVICE_MONITOR + BUNDLED + EXTERNAL_SECRETS,
    ),
}


def rendered(render: Render, case: str) -> tuple[Objects, dict[tuple[str, str], frozenset[str] | None]]:
    """A private copy of the case's objects (the render fixture's are shared) and its user-provided objects."""
    files, sets = CASES[case]
    provided = user_provided(chart_values(values_files=files, set_values=sets))
    return copy.deepcopy(render(*files, sets=sets)), provided


def named(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return named(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env_name(objects: Objects, secret: str, key: str) -> str:
    """The model server's env variable that reads `key` of Secret `secret`."""
    return next(
        str(e["name"])
        for e in container(objects, "Deployment", f"{PREFIX}-model-server")["env"]
        if e.get("valueFrom", {}).get("secretKeyRef") == {"name": secret, "key": key}
    )


# -- every value set -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_every_service_reaches_a_declared_container_port(render: Render, case: str) -> None:
    objects, _ = rendered(render, case)
    targets = check_services(objects)
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert services and {name for name, _ in targets} == services


@pytest.mark.parametrize("case", CASES)
def test_every_secret_and_configmap_reference_resolves(render: Render, case: str) -> None:
    objects, provided = rendered(render, case)
    checked = check_references(objects, provided)
    # not vacuous: the model server's admin token is among what was checked, wherever it comes from
    assert any(r.where.startswith(MODEL_SERVER) and r.kind == "Secret" for r in checked)
    # the chart never renders an object the user provides (helm would clash with, or overwrite, the user's own)
    assert not {(o["kind"], o["metadata"]["name"]) for o in objects} & set(provided)


def test_user_provided_objects_and_their_keys_come_from_the_values() -> None:
    values = chart_values(values_files=(values_file("external"),))
    assert user_provided(values) == {
        ("Secret", "mlflow-db"): frozenset({"password"}),
        ("Secret", "mlflow-s3"): frozenset({"access-key-id", "secret-access-key"}),
        ("Secret", "modelops-admin"): frozenset({"token"}),
        # keys fixed by the chart (documented in values.yaml): any key is accepted
        ("Secret", "mlflow-auth"): None,
        ("Secret", "model-signing"): None,
        ("ConfigMap", "model-signing-public"): None,
    }
    assert user_provided(chart_values()) == {}


# -- each check fails on a broken release ----------------------------------------------------------------------
def test_a_missing_secret_key_is_named_with_its_object_and_container(render: Render) -> None:
    objects, _ = rendered(render, "default")
    variable = env_name(objects, CREDENTIALS, "admin-token")
    del named(objects, "Secret", CREDENTIALS)["data"]["admin-token"]
    with pytest.raises(WiringError) as broken:
        check_references(objects)
    assert str(broken.value).startswith(
        f"{MODEL_SERVER}: env {variable} (secretKeyRef) wants key 'admin-token' of Secret '{CREDENTIALS}', "
        "which does not have it (its keys: ["
    )


def test_a_missing_secret_is_named(render: Render) -> None:
    objects, _ = rendered(render, "default")
    objects.remove(named(objects, "Secret", CREDENTIALS))
    with pytest.raises(
        WiringError, match=f"wants key '[a-z-]+' of Secret '{CREDENTIALS}', which the release "
    ):
        check_references(objects)


def test_a_secret_volume_item_without_its_key_fails(render: Render) -> None:
    objects, _ = rendered(render, "default")
    del named(objects, "Secret", f"{PREFIX}-signing")["data"]["private-key.pem"]
    pattern = (
        rf"^(Job|CronJob) {PREFIX}-training\S*, container trainer: volume 'signing-key' \(items\) wants key "
        rf"'private-key.pem' of Secret '{PREFIX}-signing', which does not have it"
    )
    with pytest.raises(WiringError, match=pattern):
        check_references(objects)


def test_a_configmap_volume_item_without_its_key_fails(render: Render) -> None:
    objects, _ = rendered(render, "default")
    del named(objects, "ConfigMap", f"{PREFIX}-signing-public")["data"]["certificate.pem"]
    message = (
        f"{MODEL_SERVER}: volume 'signing-public' (items) wants key 'certificate.pem' of ConfigMap "
        f"'{PREFIX}-signing-public', which does not have it"
    )
    with pytest.raises(WiringError, match=f"^{re.escape(message)}"):
        check_references(objects)


def test_a_missing_configmap_volume_fails(render: Render) -> None:
    objects, _ = rendered(render, "default")
    objects.remove(named(objects, "ConfigMap", f"{PREFIX}-mlflow-auth"))
    message = (
        f"Deployment {PREFIX}-mlflow, container mlflow: volume 'auth-config' wants ConfigMap "
        f"'{PREFIX}-mlflow-auth', which the release does not have"
    )
    with pytest.raises(WiringError, match=f"^{re.escape(message)}"):
        check_references(objects)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "env": [
                    {
                        "name": "X",
                        "valueFrom": {"configMapKeyRef": {"name": f"{PREFIX}-mlflow-auth", "key": "k"}},
                    }
                ]
            },
            f"env X (configMapKeyRef) wants key 'k' of ConfigMap '{PREFIX}-mlflow-auth', which does not have it",
        ),
        (
            {"envFrom": [{"secretRef": {"name": "nowhere"}}]},
            "envFrom secretRef wants Secret 'nowhere', which the release does not have",
        ),
        (
            {"envFrom": [{"configMapRef": {"name": "nowhere"}}]},
            "envFrom configMapRef wants ConfigMap 'nowhere', which the release does not have",
        ),
    ],
    ids=["configMapKeyRef", "envFrom-secret", "envFrom-configmap"],
)
def test_env_references_that_do_not_resolve_fail(
    render: Render, change: dict[str, list[dict[str, Any]]], message: str
) -> None:
    objects, _ = rendered(render, "default")
    server = container(objects, "Deployment", f"{PREFIX}-model-server")
    for field, items in change.items():
        server.setdefault(field, []).extend(items)
    with pytest.raises(WiringError, match=f"^{re.escape(f'{MODEL_SERVER}: {message}')}"):
        check_references(objects)


def test_projected_volumes_are_checked_and_optional_references_may_dangle(render: Render) -> None:
    objects, _ = rendered(render, "default")
    pod = named(objects, "Deployment", f"{PREFIX}-model-server")["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "maybe", "secret": {"secretName": "nowhere", "optional": True}})
    pod["containers"][0]["env"].append(
        {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "nowhere", "key": "k", "optional": True}}}
    )
    check_references(objects)
    projected = {"sources": [{"secret": {"name": CREDENTIALS, "items": [{"key": "nope", "path": "n"}]}}]}
    pod["volumes"].append({"name": "bundle", "projected": projected})
    message = f"Deployment {PREFIX}-model-server: volume 'bundle' (items) wants key 'nope'"
    with pytest.raises(WiringError, match=f"^{re.escape(message)}"):
        check_references(objects)


def test_a_user_provided_secret_is_checked_by_name_and_by_the_keys_the_values_name(render: Render) -> None:
    objects, provided = rendered(render, "existing-secrets")
    check_references(objects, provided)
    # without the values' word for it, the user's Secret is just missing
    with pytest.raises(WiringError, match=r"Secret 'modelops-[a-z-]+', which the release does not have"):
        check_references(objects)
    ref = next(
        e["valueFrom"]["secretKeyRef"]
        for e in container(objects, "Deployment", f"{PREFIX}-model-server")["env"]
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "modelops-admin"
    )
    ref["key"] = "token"
    with pytest.raises(WiringError) as broken:
        check_references(objects, provided)
    assert (
        "wants key 'token' of Secret 'modelops-admin', the user's own Secret, but the values name only the "
        in str(broken.value)
    )
    assert str(broken.value).startswith(MODEL_SERVER) and str(broken.value).endswith("['admin-token'] for it")


def test_an_external_secret_provides_only_its_keys(render: Render) -> None:
    objects, provided = rendered(render, "external-secrets-operator")
    external = next(o for o in objects if o["kind"] == "ExternalSecret")
    external["spec"]["data"] = [d for d in external["spec"]["data"] if d["secretKey"] != "admin-token"]
    with pytest.raises(
        WiringError, match=f"^{re.escape(MODEL_SERVER)}: .* wants key 'admin-token' of Secret"
    ):
        check_references(objects, provided)


def test_service_monitor_credentials_are_checked(render: Render) -> None:
    objects, provided = rendered(render, "monitoring")
    del named(objects, "Secret", f"{PREFIX}-mlflow-scrape")["data"]["username"]
    message = (
        f"ServiceMonitor {PREFIX}-mlflow, endpoint http: basicAuth username wants key 'username' of Secret "
        f"'{PREFIX}-mlflow-scrape', which does not have it"
    )
    with pytest.raises(WiringError, match=f"^{re.escape(message)}"):
        check_references(objects, provided)


def test_a_service_target_port_no_container_declares_fails(render: Render) -> None:
    objects, _ = rendered(render, "default")
    named(objects, "Service", f"{PREFIX}-model-server")["spec"]["ports"][0]["targetPort"] = 9999
    with pytest.raises(
        WiringError,
        match=f"^Service {PREFIX}-model-server: targetPort 9999 matches no containerPort of the pods it selects",
    ):
        check_services(objects)


@pytest.mark.parametrize("how", ["selector", "scaled-to-zero"])
def test_a_service_that_selects_no_pod_fails(render: Render, how: str) -> None:
    objects, _ = rendered(render, "default")
    if how == "selector":
        selector = named(objects, "Service", f"{PREFIX}-mlflow")["spec"]["selector"]
        selector["app.kubernetes.io/component"] = "mlfow"
    else:
        named(objects, "Deployment", f"{PREFIX}-mlflow")["spec"]["replicas"] = 0
    with pytest.raises(WiringError, match=f"^Service {PREFIX}-mlflow: its selector .* matches no pod"):
        check_services(objects)


def test_ingress_route_and_service_monitor_ports_are_checked(render: Render) -> None:
    objects, _ = rendered(render, "production")
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = {"number": 1234}
    with pytest.raises(
        WiringError, match=rf"^Ingress {ingress['metadata']['name']}: Service \S+ has no port 1234"
    ):
        check_services(objects)

    objects, _ = rendered(render, "production")
    route = next(o for o in objects if o["kind"] == "HTTPRoute")
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "nowhere"
    with pytest.raises(
        WiringError, match=r"^HTTPRoute .*: refers to Service 'nowhere', which the release does not"
    ):
        check_services(objects)

    objects, _ = rendered(render, "monitoring")
    named(objects, "ServiceMonitor", f"{PREFIX}-mlflow")["spec"]["endpoints"][0]["port"] = "metrics"
    with pytest.raises(
        WiringError, match=f"^ServiceMonitor {PREFIX}-mlflow: endpoint port 'metrics' is no named"
    ):
        check_services(objects)


# -- the container harness runs the same checks (and its own port rule) before podman does anything --------------
def test_the_container_harness_refuses_the_same_breakage_without_podman(render: Render) -> None:
    objects, _ = rendered(render, "default")
    del named(objects, "Secret", CREDENTIALS)["data"]["admin-token"]
    with pytest.raises(HarnessError, match="wants key 'admin-token'"):
        Cluster(objects, prefix="wiring-test").check_wiring()

    objects, _ = rendered(render, "default")
    Cluster(objects, prefix="wiring-test").check_wiring()
    named(objects, "Service", f"{PREFIX}-model-server")["spec"]["ports"][0]["port"] = 80
    check_services(objects)  # fine for Kubernetes, which remaps ports; the harness cannot
    with pytest.raises(
        HarnessError, match=f"^Service {PREFIX}-model-server: port 80 forwards to containerPort 8000"
    ):
        Cluster(objects, prefix="wiring-test").check_wiring()
