"""End-to-end smoke test of a running platform (what `helm test` runs): MLflow healthy, the artifact store
reachable through MLflow's proxy, the model server ready, and a real prediction from the model's example."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from modelops.errors import SmokeTestFailed


def run(
    mlflow_url: str,
    server_url: str,
    timeout_s: float = 30.0,
    report: Callable[[str], None] = print,
    auth: tuple[str, str] | None = None,
) -> None:
    """Raise SmokeTestFailed naming the first check that fails. `auth`: an MLflow principal (read-only is
    enough)."""
    with httpx.Client(timeout=timeout_s) as client:

        def check(what: str, method: str, url: str, **kwargs: object) -> httpx.Response:
            try:
                response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                raise SmokeTestFailed(f"{what}: {url} is not reachable: {exc}") from exc
            if response.status_code != 200:
                raise SmokeTestFailed(
                    f"{what}: HTTP {response.status_code} from {url}: {response.text[:300]}"
                )
            report(f"ok  {what}")
            return response

        check("MLflow is healthy", "GET", f"{mlflow_url}/health")
        ready = check("model server is ready", "GET", f"{server_url}/readyz").json()
        served = check("model server describes its model", "GET", f"{server_url}/model").json()
        example = served.get("input_example")
        # The served version's files, listed through MLflow's proxy: proves the login, the proxy and the bucket.
        run = check(
            "MLflow answers with credentials",
            "GET",
            f"{mlflow_url}/api/2.0/mlflow/runs/get",
            params={"run_id": served.get("run_id") or ""},
            auth=auth,
        ).json()["run"]
        artifact_uri = str(run["info"]["artifact_uri"])
        path = artifact_uri.split("mlflow-artifacts:", 1)[-1].lstrip("/")
        listed = check(
            "artifact bucket reachable through MLflow",
            "GET",
            f"{mlflow_url}/api/2.0/mlflow-artifacts/artifacts",
            params={"path": f"{path}/model"},
            auth=auth,
        ).json()
        if not listed.get("files"):
            raise SmokeTestFailed(f"the served model's artifacts are missing from the bucket ({path}/model)")
        if not example:
            raise SmokeTestFailed("the served model has no input example to predict on")
        body = check("prediction", "POST", f"{server_url}/predict", json={"features": example}).json()
        if body.get("model_version") != ready.get("model_version") or "prediction" not in body:
            raise SmokeTestFailed(f"prediction answered unexpectedly: {body}")
