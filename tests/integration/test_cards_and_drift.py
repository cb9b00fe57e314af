"""The server's model-card and drift endpoints, against a real MLflow and a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import AUTH_HEADERS, train_version
from tests.support import MlflowService, Service, wait_for

X = load_breast_cancer().data


def test_card_with_alias_history_and_drift_of_served_rows(
    tracking_server: MlflowService, model_name: str, start_server: Callable[..., Service]
) -> None:
    first = train_version(tracking_server.uri, model_name)
    second = train_version(tracking_server.uri, model_name, promote="never", seed=3)
    server = start_server(tracking_server.uri, model_name, extra_env={"MODELOPS_DRIFT_WINDOW_ROWS": "100"})
    url = server.uri
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "v1 served")
    deployed = httpx.post(f"{url}/deploy", json={"version": second.version}, headers=AUTH_HEADERS, timeout=60)
    assert deployed.status_code == 200, deployed.text

    card = httpx.get(f"{url}/models/{second.version}/card", timeout=30).json()
    assert card["version"] == second.version and card["run_id"] == second.run_id
    assert card["decision"]["outcome"] == "not promoted"
    [move] = card["alias_history"]
    assert (move["action"], move["from"], move["to"], move["who"]) == (
        "deploy",
        first.version,
        second.version,
        "operator",
    )
    markdown = httpx.get(f"{url}/models/{second.version}/card", params={"format": "markdown"}, timeout=30)
    assert (
        markdown.headers["content-type"].startswith("text/markdown") and "## Alias history" in markdown.text
    )
    assert httpx.get(f"{url}/models/999/card", timeout=30).status_code == 404
    assert httpx.get(f"{url}/models/x/card", timeout=30).status_code == 422

    assert httpx.get(f"{url}/drift").json()["drift"] is None  # no full window yet
    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), size=100)]
    assert httpx.post(f"{url}/predict", json={"instances": rows.tolist()}, timeout=30).status_code == 200
    calm = httpx.get(f"{url}/drift").json()
    assert calm["drift"] is False and calm["model_version"] == second.version and len(calm["features"]) == 30
    shifted = rows.copy()
    shifted[:, [0, 7, 20]] += X[:, [0, 7, 20]].std(axis=0)
    assert httpx.post(f"{url}/predict", json={"instances": shifted.tolist()}, timeout=30).status_code == 200
    report = httpx.get(f"{url}/drift").json()
    drifted = {f["feature"] for f in report["features"] if f["drift"]}
    assert report["drift"] is True and {"mean radius", "mean concave points", "worst radius"} & drifted
    assert "modelops_drift_detected 1.0" in httpx.get(f"{url}/metrics").text
