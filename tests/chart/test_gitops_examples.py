"""The example value files and the GitOps manifests render and validate; External Secrets replace lookup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CRD_GROUPS, ROOT, containers, find, values_file
from tests.chart.test_policies import GENERATED_KEYS
from tests.helm import HelmError, render_chart

Render = Callable[..., list[dict[str, Any]]]
EXAMPLES = sorted((ROOT / "examples").glob("values-*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_render_and_validate(render: Render, example: Path) -> None:
    objects = render(example)
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        for version in ("1.25.0", "1.37.0"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_aws_example_uses_irsa_rds_and_tls(render: Render) -> None:
    objects = render(ROOT / "examples" / "values-aws.yaml")
    mlflow = find(objects, "Deployment", "mlflow")
    env = {e["name"] for c in containers(mlflow) for e in c.get("env", [])}
    assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials come from the IAM role
    sa = find(objects, "ServiceAccount", "service-account")  # the pods' shared one, not the controller's
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    assert not [o for o in objects if o["kind"] == "StatefulSet"]  # no in-cluster PostgreSQL or MinIO
    assert all(o["spec"].get("tls") for o in objects if o["kind"] == "Ingress")


def test_local_example_keeps_the_node_ports(render: Render) -> None:
    objects = render(ROOT / "examples" / "values-local.yaml")
    ports = {
        o["metadata"]["name"]: o["spec"]["ports"][0].get("nodePort")
        for o in objects
        if o["kind"] == "Service"
    }
    assert {30081, 30082, 30083} <= set(ports.values())


def test_external_secrets_replace_the_generated_secret(render: Render) -> None:
    objects = render(
        values_file("default"),
        sets=(
            "externalSecrets.enabled=true",
            "externalSecrets.secretStoreRef.name=vault",
            "externalSecrets.remoteKey=modelops/prod",
            "signing.existingSecret=model-signing",
            "signing.existingPublicConfigMap=model-signing-public",
        ),
    )
    assert not [o for o in objects if o["kind"] == "Secret"]
    external = next(o for o in objects if o["kind"] == "ExternalSecret")
    assert external["spec"]["target"]["name"] == "rel-modelops-stack-credentials"
    # the console's session key is not asked of the store (the server derives it from the admin token), so an
    # existing store keeps working after an upgrade
    assert {d["secretKey"] for d in external["spec"]["data"]} == GENERATED_KEYS - {"ui-session-secret"}


def test_external_secrets_need_a_signing_secret_of_yours() -> None:
    """Without lookup a generated signing key would change on every render: refused, with what to do."""
    with pytest.raises(HelmError) as refused:
        render_chart(
            set_values=(
                "externalSecrets.enabled=true",
                "externalSecrets.secretStoreRef.name=vault",
                "externalSecrets.remoteKey=modelops/prod",
            )
        )
    assert "signing.existingSecret is required when externalSecrets.enabled" in refused.value.stderr


@pytest.mark.parametrize("manifest", ["deploy/argocd/application.yaml", "deploy/flux/helmrelease.yaml"])
def test_gitops_manifests_point_at_this_chart(manifest: str) -> None:
    documents = [d for d in yaml.safe_load_all((ROOT / manifest).read_text()) if d]
    text = yaml.safe_dump_all(documents)
    assert "charts/modelops-stack" in text
    app = documents[-1]
    assert app["kind"] in {"Application", "HelmRelease"}
    if app["kind"] == "Application":
        values = app["spec"]["source"]["helm"]["valuesObject"]
        assert values["modelServer"]["auth"]["existingSecret"]  # no lookup under Argo CD


def test_argocd_application_generates_no_secret(render: Render, tmp_path: Path) -> None:
    """Argo CD cannot run lookup: its values must leave nothing for the chart to generate, the signing key
    pair included (a new key on every sync would make every signed model unverifiable)."""
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/argocd/application.yaml").read_text()) if d]
    values = tmp_path / "argocd-values.yaml"
    values.write_text(yaml.safe_dump(documents[-1]["spec"]["source"]["helm"]["valuesObject"]))
    objects = render(values)
    assert not [o for o in objects if o["kind"] in {"Secret", "ExternalSecret"}]
    assert not [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("signing-public")
    ]
