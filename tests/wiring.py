"""Wiring checks on rendered manifests: pure functions over parsed objects, no cluster and no podman needed.

`check_services`: every Service selects the pods of a Deployment or StatefulSet and each of its ports targets a
containerPort those pods declare; every Ingress backend, Gateway API route backendRef and ServiceMonitor endpoint
names a Service port that exists. `check_references`: every Secret and ConfigMap a pod or a ServiceMonitor
refers to (env valueFrom, envFrom, secret/configMap/projected volumes and their `items`, basicAuth) exists with
the key asked for, or is one the user provides (an `existingSecret`-style value, see `user_provided`).

The chart tests run them over every CI value set (tests/chart/test_wiring.py); the container harness
(tests/containers/kube.py) runs them before it starts anything. A failure is a WiringError (an AssertionError)
naming the object, the container (or volume, or endpoint) and the missing name or key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

# Kinds whose pods a Service can select (the long-running ones).
SERVING_KINDS = ("Deployment", "StatefulSet")
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# values keys naming an object the user creates before installing (not rendered by the chart)
_PROVIDED_KEY = re.compile(r"^existing\w*(Secret|ConfigMap)$")

Keys = frozenset[str] | None  # None: any key (not known from the manifests or the values)
Provided = Mapping[tuple[str, str], Keys]  # (kind, name) -> the keys the values name for it


class WiringError(AssertionError):
    """A rendered object refers to something the release does not have; the message names the broken piece."""


class Reference(NamedTuple):
    """One reference that was checked: who refers (object, container or volume), to which kind/name/key."""

    where: str
    kind: str
    name: str
    key: str | None


def describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (metadata + spec) of a workload, the Pod itself for a Pod, None for other kinds."""
    if obj["kind"] == "Pod":
        return {"metadata": obj["metadata"], "spec": obj["spec"]}
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    if obj["kind"] in POD_KINDS:
        return obj["spec"]["template"]  # type: ignore[no-any-return]
    return None


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


# -- Services -------------------------------------------------------------------------------------------------
def check_services(objects: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """Every Service selects the pods of a Deployment or StatefulSet (one scaled to 0 replicas has none) and
    each port's targetPort (a number or a port name; the port itself when absent) is a containerPort those pods
    declare; every Ingress backend, Gateway API route backendRef and ServiceMonitor endpoint points at a Service
    and port that exist.

    Returns (Service name, port) -> the containerPort it reaches. Raises WiringError."""
    templates = [
        obj["spec"]["template"]
        for obj in objects
        if obj["kind"] in SERVING_KINDS and obj["spec"].get("replicas", 1) != 0
    ]
    services = [o for o in objects if o["kind"] == "Service" and o["spec"].get("type") != "ExternalName"]
    targets: dict[tuple[str, int], int] = {}
    for svc in services:
        name = svc["metadata"]["name"]
        selector = svc["spec"].get("selector")
        selected = [t for t in templates if _selects(selector, t["metadata"].get("labels", {}))]
        if not selected:
            raise WiringError(f"Service {name}: its selector {selector} matches no pod")
        declared = {
            (p.get("name"), p["containerPort"])
            for template in selected
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            numbers = [num for pname, num in declared if target in (pname, num)]
            if not numbers:
                raise WiringError(
                    f"Service {name}: targetPort {target!r} matches no containerPort of the pods it selects "
                    f"(declared: {sorted(declared, key=str)})"
                )
            targets[(name, port["port"])] = numbers[0]
    _check_ingresses(objects, services)
    _check_routes(objects, services)
    _check_service_monitors(objects, services)
    return targets


def _service_port(services: list[dict[str, Any]], where: str, name: str, port: int | str | None) -> None:
    svc = next((s for s in services if s["metadata"]["name"] == name), None)
    if svc is None:
        raise WiringError(f"{where}: refers to Service {name!r}, which the release does not have")
    ports = [(p.get("name"), p["port"]) for p in svc["spec"]["ports"]]
    if port is not None and not any(port in pair for pair in ports):
        raise WiringError(f"{where}: Service {name} has no port {port!r} (its ports: {ports})")


def _check_ingresses(objects: list[dict[str, Any]], services: list[dict[str, Any]]) -> None:
    for ing in (o for o in objects if o["kind"] == "Ingress"):
        spec = ing["spec"]
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        backends += [
            path["backend"]
            for rule in spec.get("rules", [])
            for path in rule.get("http", {}).get("paths", [])
        ]
        for backend in backends:
            if "service" not in backend:
                continue  # a resource backend: not ours to check
            service = backend["service"]
            port = service.get("port", {})
            _service_port(services, describe(ing), service["name"], port.get("number", port.get("name")))


def _check_routes(objects: list[dict[str, Any]], services: list[dict[str, Any]]) -> None:
    """Gateway API routes (HTTPRoute, GRPCRoute, ...): each backendRef to a Service of this namespace."""
    for route in (o for o in objects if o.get("apiVersion", "").startswith("gateway.networking.k8s.io/")):
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                if (
                    ref.get("kind", "Service") == "Service"
                    and ref.get("group", "") == ""
                    and not ref.get("namespace")
                ):
                    _service_port(services, describe(route), ref["name"], ref.get("port"))


def _check_service_monitors(objects: list[dict[str, Any]], services: list[dict[str, Any]]) -> None:
    """Each ServiceMonitor selects a Service, and each endpoint's port is a named port of one it selects."""
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        selector = monitor["spec"].get("selector", {}).get("matchLabels")
        selected = [s for s in services if _selects(selector, s["metadata"].get("labels", {}))]
        if not selected:
            raise WiringError(f"{describe(monitor)}: its selector {selector} matches no Service")
        for endpoint in monitor["spec"].get("endpoints", []):
            port = endpoint.get("port")
            names = {p.get("name") for s in selected for p in s["spec"]["ports"]}
            if port is not None and port not in names:
                raise WiringError(
                    f"{describe(monitor)}: endpoint port {port!r} is no named port of the Services it selects "
                    f"({', '.join(s['metadata']['name'] for s in selected)}: ports {sorted(map(str, names))})"
                )


# -- Secret and ConfigMap references -----------------------------------------------------------------------------
def user_provided(values: Mapping[str, Any]) -> dict[tuple[str, str], Keys]:
    """The Secrets and ConfigMaps the values say the user creates: every non-empty `existing…Secret` or
    `existing…ConfigMap` value, with the keys its sibling `…Key` values name (e.g. `secretKey`, `userKey`), or
    None (any key) when it has no such siblings (their keys are fixed and documented in values.yaml).

    A name given in several places allows the keys of all of them (any key if one of them allows any)."""
    found: dict[tuple[str, str], Keys] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            keys = frozenset(
                v for k, v in node.items() if isinstance(k, str) and k.endswith("Key") and isinstance(v, str)
            )
            for key, value in node.items():
                match = _PROVIDED_KEY.match(str(key))
                if match and isinstance(value, str) and value:
                    ref = (match.group(1), value)
                    before = found.get(ref, frozenset())
                    found[ref] = None if before is None or not keys else before | keys
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(values)
    return found


def rendered_sources(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Keys]:
    """(kind, name) -> keys of every Secret and ConfigMap the release creates: rendered ones (data, stringData,
    binaryData) and the target Secret of each ExternalSecret (its `data` secretKeys; any key with `dataFrom` or
    a template)."""
    found: dict[tuple[str, str], Keys] = {}
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("Secret", "ConfigMap"):
            found[(kind, name)] = frozenset(
                [*(obj.get("data") or {}), *(obj.get("stringData") or {}), *(obj.get("binaryData") or {})]
            )
        elif kind == "ExternalSecret":
            spec = obj["spec"]
            target = spec.get("target") or {}
            open_ended = spec.get("dataFrom") or target.get("template")
            found[("Secret", target.get("name") or name)] = (
                None if open_ended else frozenset(d["secretKey"] for d in spec.get("data") or [])
            )
    return found


class _Checker:
    def __init__(self, objects: list[dict[str, Any]], provided: Provided) -> None:
        self.rendered = rendered_sources(objects)
        self.provided = provided
        self.checked: list[Reference] = []

    def check(
        self, where: str, what: str, kind: str, name: str, key: str | None, optional: bool = False
    ) -> None:
        self.checked.append(Reference(where, kind, name, key))
        if optional:
            return  # Kubernetes starts the pod without it
        wanted = f"key {key!r} of {kind} {name!r}" if key is not None else f"{kind} {name!r}"
        if (kind, name) in self.rendered:
            keys = self.rendered[(kind, name)]
            if key is not None and keys is not None and key not in keys:
                raise WiringError(
                    f"{where}: {what} wants {wanted}, which does not have it (its keys: {sorted(keys)})"
                )
        elif (kind, name) in self.provided:
            allowed = self.provided[(kind, name)]
            if key is not None and allowed is not None and key not in allowed:
                raise WiringError(
                    f"{where}: {what} wants {wanted}, the user's own {kind}, but the values name only the keys "
                    f"{sorted(allowed)} for it"
                )
        else:
            raise WiringError(
                f"{where}: {what} wants {wanted}, which the release does not have (not rendered, and not a "
                "user-provided existingSecret/ConfigMap of the values)"
            )

    def pod(self, obj: dict[str, Any], template: dict[str, Any]) -> None:
        spec = template["spec"]
        containers = [
            *spec.get("initContainers", []),
            *spec.get("containers", []),
            *spec.get("ephemeralContainers", []),
        ]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted: set[str] = set()
        for container in containers:
            where = f"{describe(obj)}, container {container['name']}"
            self.env(where, container)
            for mount in container.get("volumeMounts", []):
                if mount["name"] in volumes:
                    mounted.add(mount["name"])
                    self.volume(where, volumes[mount["name"]])
        # a volume no container mounts is still set up by the kubelet, which fails the pod without it
        for name, volume in volumes.items():
            if name not in mounted:
                self.volume(describe(obj), volume)

    def env(self, where: str, container: dict[str, Any]) -> None:
        for item in container.get("env", []):
            source = item.get("valueFrom") or {}
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in source:
                    ref = source[field]
                    what = f"env {item['name']} ({field})"
                    self.check(where, what, kind, ref["name"], ref["key"], bool(ref.get("optional")))
        for item in container.get("envFrom", []):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in item:
                    ref = item[field]
                    self.check(where, f"envFrom {field}", kind, ref["name"], None, bool(ref.get("optional")))

    def volume(self, where: str, volume: dict[str, Any]) -> None:
        what = f"volume {volume['name']!r}"
        sources: list[tuple[str, dict[str, Any]]] = []
        if "secret" in volume:
            sources.append(("Secret", volume["secret"]))
        if "configMap" in volume:
            sources.append(("ConfigMap", volume["configMap"]))
        for projected in (volume.get("projected") or {}).get("sources", []):
            if "secret" in projected:
                sources.append(("Secret", projected["secret"]))
            if "configMap" in projected:
                sources.append(("ConfigMap", projected["configMap"]))
        for kind, source in sources:
            name = source["secretName"] if "secretName" in source else source["name"]
            optional = bool(source.get("optional"))
            items = source.get("items") or []
            if not items:
                self.check(where, what, kind, name, None, optional)
            for item in items:
                self.check(where, f"{what} (items)", kind, name, item["key"], optional)

    def service_monitor(self, obj: dict[str, Any]) -> None:
        for endpoint in obj["spec"].get("endpoints", []):
            where = f"{describe(obj)}, endpoint {endpoint.get('port')}"
            auth = endpoint.get("basicAuth") or {}
            refs = [(f"basicAuth {part}", auth[part]) for part in ("username", "password") if part in auth]
            if "bearerTokenSecret" in endpoint:
                refs.append(("bearerTokenSecret", endpoint["bearerTokenSecret"]))
            if "credentials" in (endpoint.get("authorization") or {}):
                refs.append(("authorization", endpoint["authorization"]["credentials"]))
            for what, ref in refs:
                self.check(where, what, "Secret", ref["name"], ref["key"], bool(ref.get("optional")))


def check_references(objects: list[dict[str, Any]], provided: Provided | None = None) -> list[Reference]:
    """Every Secret and ConfigMap reference of every pod (init and app containers: env valueFrom
    secretKeyRef/configMapKeyRef, envFrom; secret, configMap and projected volumes with their `items` keys) and
    of every ServiceMonitor (basicAuth, bearer token) resolves: to a rendered Secret/ConfigMap (or an
    ExternalSecret's target) that has the key, or to one in `provided` (see `user_provided`: the user's own,
    checked by name and, where the values name them, by key). References marked `optional` may dangle.

    Returns every reference checked. Raises WiringError naming the object, container or volume, and the missing
    object or key."""
    checker = _Checker(objects, provided or {})
    for obj in objects:
        template = pod_template(obj)
        if template is not None:
            checker.pod(obj, template)
        elif obj["kind"] == "ServiceMonitor":
            checker.service_monitor(obj)
    return checker.checked
