"""The chart's workloads, as rendered, running for real in podman containers.

No cluster can run here and no image can be pulled, but rootful podman works: the harness
(tests/containers/kube.py) runs every workload `helm template` renders with the same image, command, args,
env, secrets, volumes, users and probes, and each Service name as a network alias. MinIO is replaced by
moto in server mode (externalS3), because no MinIO image or binary is obtainable here; PostgreSQL is the
chart's own StatefulSet running an image built from Debian's postgresql package.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.containers import podman as pm
from tests.containers.kube import BUSY_MACHINE_FACTOR, Cluster, probe_allowance_s
from tests.helm import CHART, render_chart

RELEASE = "e2e"
VALUES = CHART / "ci" / "containers-values.yaml"
MOTO_KEYS = {"access-key-id": "e2e-access-key", "secret-access-key": "e2e-secret-key-not-a-real-one"}
# One request from the client container (the model server's own request deadline is far shorter; this only
# keeps a hung request from hanging the test).
REQUEST_TIMEOUT_S = 60

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]  # a cold image build takes minutes


def side_container(cluster: Cluster, role: str, *args: str) -> None:
    """A locked-down helper container on the release's network, torn down with the release."""
    name = f"{cluster.prefix}-{role}"
    cluster.containers.append(name)
    pm.podman(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        cluster.network,
        "--label",
        f"modelops-e2e={cluster.prefix}",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop=ALL",
        *args,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    reason = pm.usable()
    if reason:
        pytest.skip(f"container end-to-end test skipped: {reason}")
    images = pm.build_images()
    objects = render_chart(values_files=(VALUES,), namespace="e2e", release=RELEASE)
    # The externalS3 credentials the user would have created as a Secret before installing.
    objects.append({"kind": "Secret", "metadata": {"name": "moto-credentials"}, "stringData": MOTO_KEYS})
    cluster = Cluster(
        objects, prefix=f"mo-{uuid.uuid4().hex[:6]}", namespace="e2e", tool_image=images["base"]
    )
    try:
        cluster.check_wiring()
        # fails (never skips) when containers on the network cannot resolve each other by name
        cluster.create_network()
        # Helpers on the release's network that are not part of the chart: the S3 endpoint and a client.
        side_container(cluster, "moto", "--network-alias", "moto", images["moto"])
        side_container(
            cluster, "client", "--user", "10001:10001", "--entrypoint", "sleep", images["app"], "infinity"
        )
    except Exception:
        cluster.teardown()
        raise
    yield cluster
    cluster.teardown()


def in_client(cluster: Cluster, code: str) -> Any:
    """Run Python in the client container on the release's network; returns what it prints as JSON."""
    result = pm.podman(
        "exec",
        f"{cluster.prefix}-client",
        "python3",
        "-c",
        code,
        check=False,
        timeout=REQUEST_TIMEOUT_S + pm.PODMAN_OVERHEAD_S,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def http(
    cluster: Cluster, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> Any:
    return in_client(
        cluster,
        f"""
import httpx, json
r = httpx.request({method!r}, {url!r}, json={body!r}, headers={headers or {}!r}, timeout={REQUEST_TIMEOUT_S})
print(json.dumps({{"status": r.status_code, "body": r.json(), "version": r.headers.get("x-model-version")}}))
""",
    )


def model_server(cluster: Cluster) -> dict[str, Any]:
    return next(w for w in cluster.workloads("Deployment") if w["metadata"]["name"].endswith("model-server"))


def replica_versions(cluster: Cluster) -> list[str | None]:
    server = model_server(cluster)
    versions = []
    for pod in cluster.pods(server):
        name = cluster.container_name(pod, pod.spec["containers"][0])
        out = pm.podman(
            "exec",
            name,
            "python3",
            "-c",
            "import httpx; print(httpx.get('http://127.0.0.1:8000/readyz').json().get('model_version'))",
            check=False,
        ).stdout.strip()
        versions.append(out or None)
    return versions


def convergence_s(cluster: Cluster) -> float:
    """How long the chart gives a replica to follow the alias: one poll interval plus the back-off after
    failed polls, then loading the model, which its startup allowance covers; stretched for a busy machine."""
    container = model_server(cluster)["spec"]["template"]["spec"]["containers"][0]
    env = {
        e["name"]: float(e["value"])
        for e in container["env"]
        if e["name"].startswith("MODELOPS_POLL_") and "value" in e
    }
    poll = env["MODELOPS_POLL_INTERVAL_S"] + env["MODELOPS_POLL_BACKOFF_MAX_S"]
    return (poll + probe_allowance_s(container.get("startupProbe"))) * BUSY_MACHINE_FACTOR


def wait_replicas(cluster: Cluster, version: str) -> None:
    import time

    allowance = convergence_s(cluster)
    deadline = time.monotonic() + allowance
    while (seen := replica_versions(cluster)) != [version] * len(seen):
        assert time.monotonic() < deadline, (
            f"replicas serve {seen} after {allowance:.0f} s, expected v{version} everywhere"
        )
        time.sleep(1)


def test_install_train_predict_deploy_restart(cluster: Cluster) -> None:
    try:
        cluster.install()
        names = {o["kind"]: o["metadata"]["name"] for o in cluster.objects}
        prefix = f"{RELEASE}-modelops-stack"
        assert names["CronJob"] == f"{prefix}-training"
        server_url = f"http://{prefix}-model-server:8000"
        mlflow_url = f"http://{prefix}-mlflow:5000"

        # the on-install training produced a champion, and the Service answers /predict
        wait_replicas(cluster, "1")
        model = http(cluster, "GET", f"{server_url}/model")["body"]
        predicted = http(cluster, "POST", f"{server_url}/predict", {"features": model["input_example"]})
        assert predicted["status"] == 200 and predicted["version"] == "1"
        assert predicted["body"]["prediction"] in (0, 1)

        # `helm test`: the chart's own test pods pass under the same security rules
        assert cluster.run_helm_tests() == [f"{prefix}-smoke-test"]

        # a scheduled run (from the CronJob's template) registers v2; auto-promotion moves the alias on a tie
        cron = cluster.workloads("CronJob")[0]
        cluster.run_job_from_cronjob(cron, f"{prefix}-train-now")
        wait_replicas(cluster, "2")

        # POST /deploy through the Service with the token from the rendered Secret: both replicas converge
        credentials = cluster.secrets[f"{prefix}-credentials"]
        token = credentials["admin-token"]
        unauthorized = http(cluster, "POST", f"{server_url}/deploy", {"version": "1"})
        assert unauthorized["status"] == 401
        deployed = http(
            cluster, "POST", f"{server_url}/deploy", {"version": "1"}, {"Authorization": f"Bearer {token}"}
        )
        assert deployed["status"] == 200, deployed
        wait_replicas(cluster, "1")

        # a progressive rollout of v2 under load from `modelops loadtest` (no failed request allowed): the
        # controller reads both replicas' metrics through the headless Service, passes both steps and promotes
        started = http(
            cluster,
            "POST",
            f"{server_url}/rollout/start",
            {"version": "2", "steps": [50, 100], "interval_s": 5},
            {"Authorization": f"Bearer {token}"},
        )
        assert started["status"] == 200, started
        load = pm.podman(
            "exec", f"{cluster.prefix}-client", "python3", "-m", "modelops", "loadtest", "--url", server_url,
            "--stages", "4:40s", "--max-error-rate", "0", "--output", "json",
            check=False, timeout=120 + pm.PODMAN_OVERHEAD_S,
        )  # fmt: skip
        assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
        summary = json.loads(load.stdout)
        assert summary["overall"]["error_rate"] == 0 and "2" in summary["overall"]["versions"], summary
        rollout = http(cluster, "GET", f"{server_url}/rollout")["body"]
        assert rollout["state"] == "promoted", rollout
        wait_replicas(cluster, "2")

        # MLflow's backend is PostgreSQL: restart MLflow and the runs are still there
        mlflow_deployment = next(
            w for w in cluster.workloads("Deployment") if w["metadata"]["name"].endswith("mlflow")
        )
        mlflow_args = mlflow_deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])
        # with MLflow's basic-auth app, read the runs as the chart's `operator` principal
        login = (
            ("operator", credentials["mlflow-operator-password"])
            if "--app-name=basic-auth" in mlflow_args
            else None
        )
        runs_query = f"""
import httpx, json
r = httpx.post({mlflow_url + "/api/2.0/mlflow/runs/search"!r}, json={{"experiment_ids": ["1"]}},
               auth={login!r}, timeout={REQUEST_TIMEOUT_S})
r.raise_for_status()
print(json.dumps(len(r.json().get("runs", []))))
"""
        before = in_client(cluster, runs_query)
        assert before == 2
        # every alias move of this run is in the audit trail: who, from, to (what `modelops history` lists)
        model_name = next(
            e["value"]
            for e in model_server(cluster)["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "MODELOPS_MODEL_NAME"
        )
        audit_query = f"""
import httpx, json
r = httpx.get({mlflow_url + "/api/2.0/mlflow/registered-models/get"!r}, params={{"name": {model_name!r}}},
              auth={login!r}, timeout={REQUEST_TIMEOUT_S})
r.raise_for_status()
tags = {{t["key"]: t["value"] for t in r.json()["registered_model"].get("tags", [])}}
moves = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("modelops.audit.")]
print(json.dumps([[m["action"], m["who"], m["from"], m["to"]] for m in moves]))
"""
        if login is not None:
            assert in_client(cluster, audit_query) == [
                ["promotion", "trainer", None, "1"],
                ["promotion", "trainer", "1", "2"],
                ["deploy", "operator", "2", "1"],
                ["rollout-start", "operator", None, "2"],
                ["rollout-promote", "operator", "1", "2"],
            ]
        cluster.restart(cluster.pods(mlflow_deployment)[0])
        assert in_client(cluster, runs_query) == before
        postgres = next(
            w for w in cluster.workloads("StatefulSet") if w["metadata"]["name"].endswith("postgresql")
        )
        pg = cluster.container_name(
            cluster.pods(postgres)[0], postgres["spec"]["template"]["spec"]["containers"][0]
        )
        count = pm.podman(
            "exec",
            pg,
            "psql",
            "-h",
            "/var/run/postgresql",
            "-U",
            "mlflow",
            "-d",
            "mlflow",
            "-tAc",
            "SELECT e.name, count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "GROUP BY e.name ORDER BY e.name",
        ).stdout.strip()
        # the two training runs, and the rollout's own run with its report (the operator may not write elsewhere)
        assert count.splitlines() == ["modelops|2", "modelops-rollouts|1"], count

        # the model artifacts are in the S3 bucket
        keys = in_client(
            cluster,
            f"""
import boto3, json
s3 = boto3.client("s3", endpoint_url="http://moto:5000", aws_access_key_id={MOTO_KEYS["access-key-id"]!r},
                  aws_secret_access_key={MOTO_KEYS["secret-access-key"]!r}, region_name="us-east-1")
print(json.dumps([o["Key"] for o in s3.list_objects_v2(Bucket="e2e-artifacts").get("Contents", [])]))
""",
        )
        assert sum(k.endswith("/MLmodel") for k in keys) == 2, keys
        assert any(k.endswith("reference_stats.json") for k in keys)
    except BaseException:
        print(cluster.dump_logs())
        raise
