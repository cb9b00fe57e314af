"""Production features: NetworkPolicy graph, Ingress/HTTPRoute, autoscaling, disruption budget, shutdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.conftest import containers, find, pod_spec, pod_template, values_file, workloads

Render = Callable[..., list[dict[str, Any]]]
# A pod of another namespace, and an address outside the cluster (what ipBlock peers stand for here).
OUTSIDE = {
    "labels": {"app": "client"},
    "namespace": "elsewhere",
    "ns_labels": {"kubernetes.io/metadata.name": "elsewhere"},
}
INTERNET = {"labels": {}, "namespace": "", "ns_labels": {}, "external": True}


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], pod: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        return bool(pod.get("external"))
    if pod.get("external"):
        return False
    if "namespaceSelector" in peer:
        return _matches(peer["namespaceSelector"], pod["ns_labels"]) and _matches(
            peer.get("podSelector"), pod["labels"]
        )
    return pod["namespace"] == "mlops" and _matches(peer.get("podSelector"), pod["labels"])


def _rule_allows(rules: list[dict[str, Any]], peer_key: str, other: dict[str, Any], port: int) -> bool:
    for rule in rules:
        peers = rule.get(peer_key)
        if peers and not any(_peer_matches(p, other) for p in peers):
            continue
        ports = rule.get("ports")
        if ports and not any(p["port"] == port for p in ports):
            continue
        return True
    return False


def allowed(policies: list[dict[str, Any]], src: dict[str, Any], dst: dict[str, Any], port: int) -> bool:
    """Whether traffic src -> dst:port passes the NetworkPolicies (egress of src and ingress of dst)."""

    def side(pod: dict[str, Any], kind: str, key: str, other: dict[str, Any]) -> bool:
        if pod["namespace"] != "mlops":
            return True  # not our pods: our policies do not select them
        selecting = [
            p
            for p in policies
            if _matches(p["spec"]["podSelector"], pod["labels"])
            and kind in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True
        return any(_rule_allows(p["spec"].get(kind.lower(), []) or [], key, other, port) for p in selecting)

    return side(src, "Egress", "to", dst) and side(dst, "Ingress", "from", src)


def pods_by_component(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pods = {}
    for obj in workloads(objects):
        labels = pod_template(obj)["metadata"]["labels"]
        ports = [p["containerPort"] for c in containers(obj, init=False) for p in c.get("ports", [])]
        pods[labels["app.kubernetes.io/component"]] = {
            "labels": labels,
            "namespace": "mlops",
            "ns_labels": {"kubernetes.io/metadata.name": "mlops"},
            "ports": ports,
        }
    return pods


def test_network_policies_allow_exactly_the_platform_paths(render: Render) -> None:
    objects = render(values_file("default"))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert policies, "networkPolicy.enabled is true by default"
    pods = pods_by_component(objects)
    console = 9001  # the MinIO console is for people: open to any source, checked separately below
    graph = {
        (src, dst, port)
        for src, s in pods.items()
        for dst, d in pods.items()
        if src != dst
        for port in d["ports"]
        if port != console and allowed(policies, s, d, port)
    }
    assert graph == {
        ("model-server", "mlflow", 5000),
        ("training", "mlflow", 5000),
        ("tests", "mlflow", 5000),
        ("tests", "model-server", 8000),
        ("mlflow", "postgresql", 5432),
        ("db-migrate", "postgresql", 5432),
        ("mlflow", "minio", 9000),
        ("controller", "mlflow", 5000),
        ("controller", "model-server", 8000),
    }
    assert allowed(policies, OUTSIDE, pods["minio"], console) and allowed(
        policies, INTERNET, pods["minio"], console
    )
    # clients from outside reach the model server and the console, never MLflow (unless listed in
    # networkPolicy.mlflowClients) or the data stores
    for client in (OUTSIDE, INTERNET):
        assert allowed(policies, client, pods["model-server"], 8000)
        assert not allowed(policies, client, pods["mlflow"], 5000)
        assert not allowed(policies, client, pods["postgresql"], 5432)
        assert not allowed(policies, client, pods["minio"], 9000)
    # every pod may resolve names, and nothing else leaves the release but the controller's calls to the
    # Kubernetes API (port 443/6443, test_controller.py)
    assert all(allowed(policies, p, INTERNET, 53) for p in pods.values())
    assert not any(
        allowed(policies, p, INTERNET, 443) or allowed(policies, p, OUTSIDE, 8080)
        for name, p in pods.items()
        if name != "controller"
    )
    assert not allowed(policies, pods["controller"], OUTSIDE, 8080)


def test_restricted_model_server_clients(render: Render) -> None:
    objects = render(values_file("production"))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_by_component(objects)
    assert not allowed(policies, OUTSIDE, pods["model-server"], 8000)
    assert not allowed(policies, INTERNET, pods["model-server"], 8000)
    apps = {"labels": {}, "namespace": "apps", "ns_labels": {"kubernetes.io/metadata.name": "apps"}}
    assert allowed(policies, apps, pods["model-server"], 8000)
    assert allowed(policies, pods["tests"], pods["model-server"], 8000)
    # MLflow: the ingress controller listed in networkPolicy.mlflowClients, not the model server's clients
    ingress = {
        "labels": {"app": "controller"},
        "namespace": "ingress-nginx",
        "ns_labels": {"kubernetes.io/metadata.name": "ingress-nginx"},
    }
    assert allowed(policies, ingress, pods["mlflow"], 5000)
    assert not allowed(policies, apps, pods["mlflow"], 5000)
    assert not allowed(policies, INTERNET, pods["mlflow"], 5000)


def test_network_policies_can_be_turned_off(render: Render) -> None:
    assert not [
        o
        for o in render(values_file("default"), sets=("networkPolicy.enabled=false",))
        if o["kind"] == "NetworkPolicy"
    ]


def test_ingress_routes_and_mlflow_allowed_hosts(render: Render) -> None:
    objects = render(values_file("production"))
    ingresses = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Ingress"}
    assert set(ingresses) == {
        "rel-modelops-stack-mlflow",
        "rel-modelops-stack-model-server",
        "rel-modelops-stack-minio",
    }
    mlflow = ingresses["rel-modelops-stack-mlflow"]
    assert (
        mlflow["spec"]["ingressClassName"] == "nginx"
        and mlflow["spec"]["tls"][0]["secretName"] == "mlflow-tls"
    )
    backend = mlflow["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "rel-modelops-stack-mlflow", "port": {"number": 5000}}
    env = {
        e["name"]: e.get("value")
        for e in containers(find(objects, "Deployment", "mlflow"), init=False)[0]["env"]
    }
    assert "mlflow.example.com" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    route = next(o for o in objects if o["kind"] == "HTTPRoute")
    assert route["spec"]["hostnames"] == ["models.internal.example.com"]
    assert route["spec"]["rules"][0]["backendRefs"][0] == {
        "name": "rel-modelops-stack-model-server",
        "port": 8000,
    }


def test_autoscaling_and_disruption_budget(render: Render) -> None:
    objects = render(values_file("production"))
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(objects, "Deployment", "model-server")["spec"]  # the HPA owns it
    assert next(o for o in objects if o["kind"] == "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    single = render(values_file("minimal"))
    assert not [
        o for o in single if o["kind"] == "PodDisruptionBudget"
    ]  # one replica: a PDB would block drains


@pytest.mark.parametrize("stem", ["default", "production"])
def test_graceful_shutdown_and_spread(render: Render, stem: str) -> None:
    server = find(render(values_file(stem)), "Deployment", "model-server")
    spec = pod_spec(server)
    sleep = int(containers(server)[0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > sleep + 30  # preStop, then uvicorn's 30 s drain
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_helm_test_pod(render: Render) -> None:
    objects = render(values_file("default"))
    pod = next(o for o in objects if o["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args[0] == "smoke-test" and "http://rel-modelops-stack-model-server:8000" in args


def test_bundled_monitoring_paths(render: Render) -> None:
    objects = render(values_file("monitoring"))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = pods_by_component(objects)
    assert allowed(policies, pods["prometheus"], pods["model-server"], 8000)
    assert allowed(policies, pods["prometheus"], pods["mlflow"], 5000)
    assert allowed(policies, pods["grafana"], pods["prometheus"], 9090)
    assert allowed(policies, OUTSIDE, pods["grafana"], 3000)
    assert not allowed(policies, OUTSIDE, pods["prometheus"], 9090)
    assert not allowed(policies, pods["prometheus"], pods["postgresql"], 5432)
