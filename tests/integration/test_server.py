"""The model server as a real process, against a real MLflow server, over HTTP on 127.0.0.1."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_breast_cancer

from modelops.signing import sign_model
from tests.integration.conftest import ADMIN_TOKEN, WORSE, model_server, train_version
from tests.support import MlflowService, Service, mlflow_server, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DATA = load_breast_cancer(as_frame=True)
X = DATA.data.to_numpy()
COLUMNS = list(DATA.data.columns)


@dataclass
class Served:
    server: Service
    name: str
    tracking_uri: str
    v1_run: str

    @property
    def url(self) -> str:
        return self.server.uri  # type: ignore[attr-defined,no-any-return]


def ready_version(url: str) -> str | None:
    response = httpx.get(f"{url}/readyz", timeout=5)
    return response.json().get("model_version") if response.status_code == 200 else None


def wait_version(url: str, version: str, timeout_s: float = 60) -> None:
    wait_for(lambda: ready_version(url) == version, timeout_s, f"server to serve v{version}")


@pytest.fixture(scope="module")
def served(tracking_server: MlflowService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    name = f"served-{uuid.uuid4().hex[:8]}"
    tracking_server.grant(name)
    v1 = train_version(tracking_server.uri, name)  # type: ignore[attr-defined]
    server = model_server(
        tmp_path_factory.mktemp("server"),
        tracking_server.uri,
        name,  # type: ignore[attr-defined]
        extra_env={"MODELOPS_MAX_REQUEST_ROWS": "100", "MODELOPS_MAX_BODY_BYTES": "200000"},
    ).start()
    wait_version(server.uri, "1")  # type: ignore[attr-defined]
    yield Served(server, name, tracking_server.uri, v1.run_id)  # type: ignore[attr-defined]
    server.stop()


@pytest.fixture(scope="module")
def reference(served: Served) -> Any:
    mlflow.set_tracking_uri(served.tracking_uri)
    return mlflow.sklearn.load_model(f"models:/{served.name}/1")


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=30)


# -- predictions ---------------------------------------------------------------------------------------
def test_single_row_matches_the_model(served: Served, reference: Any) -> None:
    response = post(f"{served.url}/predict", {"features": X[0].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] == int(reference.predict(X[:1])[0])
    assert np.allclose(body["probabilities"], reference.predict_proba(X[:1])[0])
    assert body["classes"] == [0, 1]
    assert (
        body["model_name"] == served.name and body["model_version"] == "1" and body["run_id"] == served.v1_run
    )
    assert response.headers["x-model-version"] == "1"


def test_batch_and_named_rows_match_the_model(served: Served, reference: Any) -> None:
    rows = X[:50]
    batch = post(f"{served.url}/predict", {"instances": rows.tolist()}).json()
    assert batch["predictions"] == reference.predict(rows).tolist()
    assert np.allclose(batch["probabilities"], reference.predict_proba(rows))
    named = [dict(zip(COLUMNS, r.tolist(), strict=True)) for r in rows[:5]]
    by_name = post(f"{served.url}/predict", {"instances": named}).json()
    assert by_name["predictions"] == reference.predict(rows[:5]).tolist()
    one = post(f"{served.url}/predict", {"features": dict(reversed(list(named[3].items())))}).json()
    assert one["prediction"] == int(reference.predict(rows[3:4])[0])


def test_v2_protocol(served: Served, reference: Any) -> None:
    url = served.url
    assert httpx.get(f"{url}/v2").json()["name"]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/{served.name}").json()
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 30]
    assert httpx.get(f"{url}/v2/models/{served.name}/ready").json()["ready"] is True
    rows = X[:4]
    request = {
        "id": "abc",
        "inputs": [
            {
                "name": "input-0",
                "shape": [4, 30],
                "datatype": "FP32",
                "data": rows.astype(np.float32).ravel().tolist(),
            }
        ],
    }
    body = post(f"{url}/v2/models/{served.name}/infer", request).json()
    assert body["id"] == "abc" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = reference.predict(rows.astype(np.float32).astype(np.float64))
    assert outputs["predict"]["data"] == expected.tolist() and outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict_proba"]["shape"] == [4, 2]
    nested = {
        **request,
        "inputs": [{**request["inputs"][0], "datatype": "FP64", "data": rows.tolist()}],
        "outputs": [{"name": "predict"}],
    }
    body = post(f"{url}/v2/models/{served.name}/versions/1/infer", nested).json()
    assert [o["name"] for o in body["outputs"]] == ["predict"]
    assert body["outputs"][0]["data"] == reference.predict(rows).tolist()
    assert post(f"{url}/v2/models/{served.name}/versions/9/infer", nested).status_code == 404
    assert post(f"{url}/v2/models/other/infer", nested).status_code == 404


ROW = [1.0] * 30


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"features": [1.0, 2.0]}, 422, "features"),
        ({"features": [*ROW[:29], "x"]}, 422, "features[29]"),
        ({"features": [*ROW[:29], None]}, 422, "features[29]"),
        ({"features": [*ROW[:29], True]}, 422, "features[29]"),
        (b'{"features": [' + b"1.0," * 29 + b"1e999]}", 422, "features[29]"),
        ({"features": {"mean radius": 1.0}}, 422, "features.mean texture"),
        ({"features": {**dict.fromkeys(COLUMNS, 1.0), "colour": 2}}, 422, "features.colour"),
        ({"instances": []}, 422, "instances"),
        ({"instances": [ROW, ROW[:3]]}, 422, "instances[1]"),
        ({"instances": [ROW, [*ROW[:29], "1.5"]]}, 422, "instances[1][29]"),
        ({"instances": [ROW] * 101}, 413, "instances"),
        ({"features": ROW, "instances": [ROW]}, 422, "body"),
        ({}, 422, "body"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_input_is_a_clear_4xx(served: Served, body: Any, status: int, field: str) -> None:
    if isinstance(body, bytes):  # JSON that a Python client would refuse to write (1e999 overflows to inf)
        response = httpx.post(f"{served.url}/predict", content=body)
    else:
        response = post(f"{served.url}/predict", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["message"] and error["code"]


def test_malformed_json_oversized_body_and_v2_errors(served: Served) -> None:
    url = served.url
    bad = httpx.post(
        f"{url}/predict", content=b'{"features": [1, 2', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
    nan = httpx.post(f"{url}/predict", content=b'{"instances": [[' + b"1.0," * 29 + b"NaN]]}")
    assert nan.status_code == 422 and nan.json()["error"]["field"] == "instances[0][29]"
    huge = httpx.post(f"{url}/predict", content=b"[" + b"1," * 150_000 + b"1]")
    assert huge.status_code == 413 and huge.json()["error"]["field"] == "body"
    infer = f"{url}/v2/models/{served.name}/infer"
    tensor = {"name": "input-0", "shape": [1, 30], "datatype": "FP32", "data": ROW}
    # /v2 errors are the protocol's {"error": "<message>"}; the message names the field
    for change, field, status in [
        ({"datatype": "BYTES"}, "inputs[0].datatype", 422),
        ({"shape": [1, 3]}, "inputs[0].shape", 422),
        ({"data": ROW[:5]}, "inputs[0].data", 422),
        ({"shape": [200, 30]}, "inputs[0]", 413),
        ({"name": "x"}, "inputs[0].name", 400),
    ]:
        response = post(infer, {"inputs": [{**tensor, **change}]})
        assert response.status_code == status and field in response.json()["error"], response.text
    assert post(infer, {"inputs": []}).status_code == 422


def test_headers_model_and_versions_endpoints(served: Served) -> None:
    response = httpx.get(f"{served.url}/model", headers={"X-Request-Id": "req-42"})
    assert response.headers["x-request-id"] == "req-42" and response.headers["x-model-version"] == "1"
    info = response.json()
    assert info["version"] == "1" and info["run_id"] == served.v1_run and len(info["features"]) == 30
    assert "roc_auc" in info["metrics"] and info["signature"]["inputs"]
    generated = httpx.get(f"{served.url}/healthz").headers["x-request-id"]
    assert len(generated) == 32
    versions = httpx.get(f"{served.url}/models/versions").json()
    assert versions["served_version"] == "1"
    assert versions["versions"][0]["version"] == "1" and "champion" in versions["versions"][0]["aliases"]
    assert httpx.get(f"{served.url}/docs").status_code == 200
    paths = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    assert {"/predict", "/deploy", "/rollback", "/v2/models/{name}/infer"} <= set(paths)


def test_metrics_count_requests_rows_and_model(served: Served) -> None:
    before = httpx.get(f"{served.url}/metrics").text
    for _ in range(3):
        post(f"{served.url}/predict", {"instances": [ROW, ROW]})
    text = httpx.get(f"{served.url}/metrics").text
    assert f'modelops_model_info{{name="{served.name}",run_id="{served.v1_run}",version="1"}} 1.0' in text
    assert "modelops_model_loaded 1.0" in text

    def value(doc: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in doc.splitlines() if line.startswith(prefix))

    ok = 'modelops_requests_total{endpoint="/predict",method="POST",status="200"}'
    assert value(text, ok) - value(before, ok) == 3
    assert value(text, "modelops_predicted_rows_total") - value(before, "modelops_predicted_rows_total") == 6
    for name in (
        "modelops_request_duration_seconds_bucket",
        "modelops_batch_rows_bucket",
        "modelops_model_loads_total",
        "modelops_model_load_duration_seconds_count",
    ):
        assert name in text


# -- admin -----------------------------------------------------------------------------------------------
def test_admin_needs_the_token(served: Served) -> None:
    assert post(f"{served.url}/deploy", {"version": "1"}).status_code == 401
    wrong = post(f"{served.url}/deploy", {"version": "1"}, {"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert httpx.post(f"{served.url}/rollback").status_code == 401


def test_admin_is_disabled_without_a_configured_token(
    tracking_server: Service, start_server: Callable[..., Service]
) -> None:
    server = start_server(tracking_server.uri, "no-such-model", admin_token=None)  # type: ignore[attr-defined]
    response = post(f"{server.uri}/deploy", {"version": "1"}, AUTH)  # type: ignore[attr-defined]
    assert response.status_code == 403 and "MODELOPS_ADMIN_TOKEN" in response.json()["error"]["message"]


def test_readiness_waits_for_a_champion(
    tracking_server: Service, model_name: str, start_server: Callable[..., Service]
) -> None:
    server = start_server(tracking_server.uri, model_name)  # type: ignore[attr-defined]
    url = server.uri  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/healthz").status_code == 200
    not_ready = httpx.get(f"{url}/readyz")
    assert not_ready.status_code == 503
    wait_for(lambda: "holds alias" in httpx.get(f"{url}/readyz").json()["reason"], 20, "a reason in /readyz")
    assert post(f"{url}/predict", {"features": ROW}).status_code == 503
    assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    train_version(tracking_server.uri, model_name)  # type: ignore[attr-defined]
    wait_version(url, "1")
    assert post(f"{url}/predict", {"features": ROW}).status_code == 200


def test_deploy_by_version_and_run_then_rollback(
    tracking_server: Service,
    model_name: str,
    start_server: Callable[..., Service],
    signing_keys: tuple[Path, Path],
) -> None:
    uri = tracking_server.uri  # type: ignore[attr-defined]
    train_version(uri, model_name)
    second = train_version(uri, model_name, algorithm="random_forest", params=WORSE)
    assert second.promoted is False
    server = start_server(uri, model_name)
    url = server.uri  # type: ignore[attr-defined]
    wait_version(url, "1")
    assert httpx.post(f"{url}/rollback", headers=AUTH).status_code == 409

    deployed = post(f"{url}/deploy", {"version": "2"}, AUTH)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["version"] == "2" and deployed.json()["previous_version"] == "1"
    assert deployed.headers["x-model-version"] == "2"
    assert MlflowClient(uri).get_model_version_by_alias(model_name, "champion").version == "2"
    assert post(f"{url}/predict", {"features": ROW}).headers["x-model-version"] == "2"

    # A run logged with MLflow's own log_model is not signed: deploy refuses it and the alias stays.
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tests")  # the trainer principal's own experiment (not MLflow's default one)
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500).fit(X[:200], DATA.target[:200])
    with mlflow.start_run() as unsigned, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        mlflow.sklearn.save_model(model, str(folder), input_example=DATA.data.head(2))
        mlflow.log_artifacts(str(folder), "model")  # everything as the trainer does, but no signature
    refused = httpx.post(f"{url}/deploy", params={"run_id": unsigned.info.run_id}, headers=AUTH)
    assert refused.status_code == 422 and "not signed" in refused.json()["error"]["message"], refused.text
    assert MlflowClient(uri).get_model_version_by_alias(model_name, "champion").version == "2"

    # A signed run that was logged but never registered: deploy registers it, then moves the alias.
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        mlflow.sklearn.save_model(model, str(folder), input_example=DATA.data.head(2))
        sign_model(folder, signing_keys[0], model_name=model_name, run_id=run.info.run_id)
        mlflow.log_artifacts(str(folder), "model")
    by_run = httpx.post(f"{url}/deploy", params={"run_id": run.info.run_id}, headers=AUTH)
    assert by_run.status_code == 200, by_run.text
    assert by_run.json()["version"] == "4" and by_run.json()["run_id"] == run.info.run_id

    assert post(f"{url}/deploy", {"version": "99"}, AUTH).status_code == 404
    assert post(f"{url}/deploy", {"run_id": "0" * 32}, AUTH).status_code == 404
    assert post(f"{url}/deploy", {}, AUTH).status_code == 422

    back = httpx.post(f"{url}/rollback", headers=AUTH)
    assert back.status_code == 200 and back.json()["version"] == "2"
    again = httpx.post(f"{url}/rollback", headers=AUTH)
    assert again.status_code == 200 and again.json()["version"] == "1"
    assert MlflowClient(uri).get_model_version_by_alias(model_name, "champion").version == "1"
    assert httpx.post(f"{url}/rollback", headers=AUTH).status_code == 409


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(
    tracking_server: MlflowService, model_name: str, start_server: Callable[..., Service]
) -> None:
    uri = tracking_server.uri
    train_version(uri, model_name)
    broken = train_version(uri, model_name, promote="never", seed=5)
    client = MlflowClient(uri)
    # Someone with access to the object store rewrites the signed model file in place.
    corrupted = list(tracking_server.root.glob(f"artifacts/**/{broken.run_id}/artifacts/model/model.skops"))
    assert corrupted, "the model file of the version to break was not found"
    for path in corrupted:
        path.write_bytes(b"this is not a model")
    server = start_server(uri, model_name)
    url = server.uri
    wait_version(url, "1")

    refused = post(f"{url}/deploy", {"version": broken.version}, AUTH)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "model_refused", refused.text
    assert "differ from its signature" in refused.json()["error"]["message"]
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"

    client.set_registered_model_alias(model_name, "champion", broken.version)  # as the trainer
    wait_for(
        lambda: 'modelops_model_refusals_total{reason="tampered"} 2.0' in httpx.get(f"{url}/metrics").text,
        30,
        "a second refusal, by the watcher",
    )
    assert ready_version(url) == "1"
    assert post(f"{url}/predict", {"features": ROW}).headers["x-model-version"] == "1"
    assert "modelops_alias_unfollowed_polls" in httpx.get(f"{url}/metrics").text
    assert f"refused {model_name} v{broken.version} (tampered)" in server.log_path.read_text()


def test_mlflow_outage_keeps_serving_and_recovers(
    tmp_path: Any, model_name: str, start_server: Callable[..., Service]
) -> None:
    tracking = mlflow_server(tmp_path / "own-mlflow")
    tracking.grant(model_name)
    tracking.start()
    try:
        uri = tracking.uri  # type: ignore[attr-defined]
        train_version(uri, model_name)
        server = start_server(uri, model_name)
        url = server.uri  # type: ignore[attr-defined]
        wait_version(url, "1")
        tracking.stop()
        time.sleep(2)  # several polls fail
        for _ in range(5):
            assert post(f"{url}/predict", {"features": ROW}).status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and "not reachable" in ready.json().get("registry_warning", "")
        tracking.start()
        train_version(uri, model_name, promote="always", seed=7)
        wait_version(url, "2", timeout_s=30)
    finally:
        tracking.stop()


def test_swap_under_load_has_no_failed_request_and_never_goes_back(
    tracking_server: Service, model_name: str, start_server: Callable[..., Service]
) -> None:
    uri = tracking_server.uri  # type: ignore[attr-defined]
    for seed in (1, 2, 3):
        train_version(uri, model_name, promote="never" if seed > 1 else "auto", seed=seed)
    server = start_server(uri, model_name)
    url = server.uri  # type: ignore[attr-defined]
    wait_version(url, "1")
    seen: dict[int, list[int]] = {}
    failures: list[str] = []
    stop = threading.Event()

    def hammer(worker: int) -> None:
        # Each client sends its next request only after the previous answer, so its own sequence
        # of versions is ordered in time: it must never go back.
        versions = seen.setdefault(worker, [])
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.post(f"{url}/predict", json={"features": ROW})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                versions.append(int(response.headers.get("x-model-version") or 0))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        client = MlflowClient(uri)
        time.sleep(0.5)
        client.set_registered_model_alias(model_name, "champion", "2")
        wait_version(url, "2")
        time.sleep(0.5)
        client.set_registered_model_alias(model_name, "champion", "3")
        wait_version(url, "3")
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert sum(len(v) for v in seen.values()) > 100
    assert set().union(*seen.values()) == {1, 2, 3}
    for worker, versions in seen.items():
        assert versions == sorted(versions), f"client {worker} saw a version go back: {versions}"


def test_metrics_are_correct_with_several_workers(
    served: Served, start_server: Callable[..., Service]
) -> None:
    server = start_server(served.tracking_uri, served.name, workers=2)
    url = server.uri  # type: ignore[attr-defined]
    wait_version(url, "1")
    wait_for(lambda: all(ready_version(url) == "1" for _ in range(6)), 60, "both workers ready")
    with httpx.Client() as client:
        for _ in range(40):
            assert client.post(f"{url}/predict", json={"features": ROW}).status_code == 200
    text = httpx.get(f"{url}/metrics").text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith('modelops_requests_total{endpoint="/predict",method="POST",status="200"}')
    )
    assert float(line.rsplit(" ", 1)[1]) == 40
