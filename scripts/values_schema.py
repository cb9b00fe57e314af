"""Generate charts/modelops-stack/values.schema.json and the chart README's values table from values.yaml.

values.yaml is the single source: every key's type comes from its default, its description from the
`# --` comment above it, and a few constraints (enums, ranges) from RULES below. Objects are strict
(additionalProperties: false) except the Kubernetes pass-through ones in FREE_FORM.

    python scripts/values_schema.py          # write the schema
    python scripts/values_schema.py --check  # exit 1 if the file is stale or a key lacks a `# --` comment
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "modelops-stack"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
README = CHART / "README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"

# Kubernetes objects passed through as they are: the API server validates them.
FREE_FORM = {
    "podSecurityContext",
    "containerSecurityContext",
    "nodeSelector",
    "podAnnotations",
    "serviceAccount.annotations",
    "training.params",
    "mlflow.ingress.annotations",
    "modelServer.ingress.annotations",
    "minio.ingress.annotations",
}
SERVICE_TYPES = ["ClusterIP", "NodePort", "LoadBalancer"]
PULL_POLICIES = ["Always", "IfNotPresent", "Never"]
PORT = {"minimum": 1, "maximum": 65535}
NODE_PORT = {"minimum": 30000, "maximum": 32767}
QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"}
TAG = {"minLength": 1, "not": {"const": "latest"}}
IPV4_CIDRS = {"items": {"type": "string", "pattern": r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"}}
RESOURCES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["requests", "limits"],
    "properties": {
        part: {
            "type": "object",
            "additionalProperties": False,
            "required": ["cpu", "memory"],
            "properties": {"cpu": QUANTITY, "memory": QUANTITY},
        }
        for part in ("requests", "limits")
    },
}
# Rules by what a key is, wherever it stands: every image, Service and port gets them, new ones included.
SUFFIX_RULES: dict[str, dict[str, Any]] = {
    "image.tag": TAG,
    "image.pullPolicy": {"enum": PULL_POLICIES},
    "service.type": {"enum": SERVICE_TYPES},
    "console.type": {"enum": SERVICE_TYPES},
    "port": PORT,
    "nodePort": NODE_PORT,
}
RULES: dict[str, dict[str, Any]] = {
    "image.repository": {"minLength": 1},
    "mlflow.replicas": {"minimum": 0},
    "mlflow.workers": {"minimum": 1},
    "modelServer.replicas": {"minimum": 0},
    "modelServer.workers": {"minimum": 1},
    "modelServer.pollIntervalS": {"exclusiveMinimum": 0},
    "modelServer.pollBackoffMaxS": {"exclusiveMinimum": 0},
    "modelServer.maxBodyBytes": {"minimum": 1},
    "modelServer.maxRequestRows": {"minimum": 1},
    "modelServer.maxBatchRows": {"minimum": 1},
    "modelServer.maxBatchWaitMs": {"minimum": 0},
    "training.algorithm": {"enum": ["logreg", "random_forest", "gradient_boosting"]},
    "training.promote": {"enum": ["auto", "always", "never"]},
    "training.schedule": {"minLength": 9},
    "training.testSize": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "training.metric": {"enum": ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"]},
    "model.name": {"minLength": 1},
    "model.alias": {"minLength": 1, "pattern": "^[A-Za-z][A-Za-z0-9_-]*$"},
    "tmpSizeLimit": QUANTITY,
    "postgresql.persistence.size": QUANTITY,
    "minio.persistence.size": QUANTITY,
    "minio.bucket": {"pattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
    "mlflow.httpRoute.hostnames": {"items": {"type": "string"}},
    "externalSecrets.secretStoreRef.kind": {"enum": ["SecretStore", "ClusterSecretStore"]},
    "monitoring.bundled.prometheus.storageSizeLimit": QUANTITY,
    "modelServer.httpRoute.hostnames": {"items": {"type": "string"}},
    "training.thresholds": {"items": {"type": "string", "pattern": r"^[a-z_0-9]+\s*(>=|<=)\s*[-+0-9.eE]+$"}},
    "training.minDelta": {"minimum": 0},
    "modelServer.modelVolumeSizeLimit": QUANTITY,
    "modelServer.autoscaling.minReplicas": {"minimum": 1},
    "modelServer.autoscaling.maxReplicas": {"minimum": 1},
    "modelServer.autoscaling.targetCPUUtilizationPercentage": {"minimum": 1, "maximum": 100},
    "modelServer.preStopSleepS": {"minimum": 0},
    "modelServer.terminationGracePeriodSeconds": {"minimum": 1},
    "networkPolicy.trainerEgress.exceptCidrs": IPV4_CIDRS,
    "networkPolicy.trainerEgress.clusterCidrs": IPV4_CIDRS,
    "signing.publicCertificate": {"pattern": "^$|-----BEGIN (CERTIFICATE|PUBLIC KEY)-----"},
    # progressive delivery, prediction log, console (the server's and the controller's settings' ranges)
    "modelServer.routingHeader": {"pattern": "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"},
    "modelServer.challengerTimeoutMs": {"exclusiveMinimum": 0},
    "modelServer.shadowQueueRequests": {"minimum": 1},
    "modelServer.feedbackMaxPending": {"minimum": 1},
    "modelServer.predictionLog.sampleRate": {"minimum": 0, "maximum": 1},
    "modelServer.predictionLog.uri": {"pattern": "^(mlflow-artifacts|file):"},
    "modelServer.predictionLog.flushS": {"exclusiveMinimum": 0},
    "modelServer.predictionLog.maxBufferRows": {"minimum": 1},
    "modelServer.ui.sessionTtlS": {"minimum": 1},
    "controller.tickS": {"exclusiveMinimum": 0},
    "controller.prometheusUrl": {"pattern": "^$|^https?://"},
    "rollout.challengerAlias": {"minLength": 1, "pattern": "^[A-Za-z][A-Za-z0-9_-]*$"},
    "rollout.steps": {"pattern": "^[0-9]{1,3}( *, *[0-9]{1,3})*$"},
    "rollout.intervalS": {"exclusiveMinimum": 0},
    "rollout.minRequests": {"minimum": 1},
    "rollout.maxErrorRatioIncrease": {"minimum": 0, "maximum": 1},
    "rollout.maxP99Ratio": {"minimum": 1},
    "rollout.p99SlackMs": {"minimum": 0},
    "rollout.maxPsi": {"exclusiveMinimum": 0},
    "retraining.onDrift.checks": {"minimum": 1},
    "retraining.onDrift.checkIntervalS": {"exclusiveMinimum": 0},
    "retraining.onDrift.cooldownS": {"minimum": 0},
}
# Numbers that may be written as integers or decimals.
NUMBERS = {
    "modelServer.pollIntervalS",
    "modelServer.pollBackoffMaxS",
    "modelServer.maxBatchWaitMs",
    "training.testSize",
    "modelServer.challengerTimeoutMs",
    "modelServer.predictionLog.flushS",
    "controller.tickS",
    "rollout.intervalS",
    "rollout.maxP99Ratio",
    "rollout.p99SlackMs",
    "retraining.onDrift.checkIntervalS",
    "retraining.onDrift.cooldownS",
}


def descriptions(text: str) -> dict[str, str]:
    """Map dotted key paths to the `# --` comment above them."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if not match:
            if stripped:
                pending = None
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = ".".join(name for _, name in stack)
        if pending:
            found[path] = " ".join(pending)
        pending = None
    return found


def node(path: str, value: Any, docs: dict[str, str]) -> dict[str, Any]:
    key = path.rsplit(".", 1)[-1]
    if key == "resources":
        schema = dict(RESOURCES)
    elif path in FREE_FORM or value == {}:
        # Kubernetes pass-through objects and maps that default to empty (labels, annotations, params)
        schema = {"type": "object"}
    elif isinstance(value, dict):
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: node(f"{path}.{k}" if path else k, v, docs) for k, v in value.items()},
        }
    elif isinstance(value, bool):
        schema = {"type": "boolean"}
    elif isinstance(value, int):
        schema = {"type": "number" if path in NUMBERS else "integer"}
    elif isinstance(value, float):
        schema = {"type": "number"}
    elif isinstance(value, list):
        item = value[0] if value else None
        schema = {
            "type": "array",
            "items": {"type": "string"} if isinstance(item, str) else {"type": "object"},
        }
    else:
        schema = {"type": "string"}
    for suffix, rule in SUFFIX_RULES.items():
        if path == suffix or path.endswith("." + suffix):
            schema.update(rule)
    schema.update(RULES.get(path, {}))
    if path in docs:
        schema["description"] = docs[path]
    return schema


def build() -> tuple[dict[str, Any], list[str]]:
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    docs = descriptions(text)
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "modelops-stack values",
        **node("", values, docs),
    }
    undocumented: list[str] = []

    def walk(prefix: str, tree: dict[str, Any]) -> None:
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else k
            is_group = isinstance(v, dict) and path not in FREE_FORM and k != "resources"
            if not is_group and path not in docs:
                undocumented.append(path)
            if is_group:
                walk(path, v)

    walk("", values)
    return schema, undocumented


def values_table() -> str:
    """Markdown table of every documented key with its default."""
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    docs = descriptions(text)
    rows = ["| key | default | description |", "| --- | --- | --- |"]

    def default_of(path: str) -> object:
        node: object = values
        for part in path.split("."):
            node = node[part]  # type: ignore[index]
        return node

    for path, doc in docs.items():
        rows.append(f"| `{path}` | `{json.dumps(default_of(path))}` | {doc.replace('|', '/')} |")
    return "\n".join(rows)


def readme_with_table() -> str:
    readme = README.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{values_table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    schema, undocumented = build()
    rendered = json.dumps(schema, indent=2) + "\n"
    if undocumented:
        print("keys without a `# --` comment: " + ", ".join(undocumented), file=sys.stderr)
        return 1
    readme = readme_with_table()
    if args.check:
        stale = [str(p) for p, want in ((SCHEMA, rendered), (README, readme)) if p.read_text() != want]
        if stale:
            print(f"stale: {', '.join(stale)}: run python scripts/values_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(rendered)
    README.write_text(readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
