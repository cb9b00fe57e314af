"""End-to-end smoke test of a running platform (what `helm test` runs): MLflow healthy, the artifact store
reachable through MLflow's proxy, the model server ready, and a real prediction from the model's example."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from modelops.errors import ModelOpsError


class SmokeTestFailed(ModelOpsError):
    code = "smoke_test_failed"


def run(
    mlflow_url: str, server_url: str, timeout_s: float = 30.0, report: Callable[[str], None] = print
) -> None:
    """Raise SmokeTestFailed naming the first check that fails."""
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
        # Listing the artifact root goes through MLflow's proxy to the bucket: it fails if the bucket is missing.
        check(
            "artifact bucket reachable through MLflow",
            "GET",
            f"{mlflow_url}/api/2.0/mlflow-artifacts/artifacts",
        )
        ready = check("model server is ready", "GET", f"{server_url}/readyz").json()
        example = (
            check("model server describes its model", "GET", f"{server_url}/model")
            .json()
            .get("input_example")
        )
        if not example:
            raise SmokeTestFailed("the served model has no input example to predict on")
        body = check("prediction", "POST", f"{server_url}/predict", json={"features": example}).json()
        if body.get("model_version") != ready.get("model_version") or "prediction" not in body:
            raise SmokeTestFailed(f"prediction answered unexpectedly: {body}")
