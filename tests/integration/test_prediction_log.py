"""The prediction log and feedback against a real `mlflow server` (basic-auth, proxied artifacts) and a real
`modelops serve`: every answered request is in the log after SIGTERM; MLflow stopped mid-stream costs no
prediction and, once it is back, no record; labels join; `modelops train --data <log prefix>` trains on the
labelled rows."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from modelops.monitoring.predlog import ArtifactProxyStore, expand
from modelops.training.data import load_dataset
from tests.integration.conftest import AUTH_HEADERS, train_version
from tests.support import TEST_PASSWORDS, MlflowService, Service, mlflow_server, modelops, wait_for

pytestmark = pytest.mark.slow
FAST_LOG = {"MODELOPS_PREDICTION_LOG_FLUSH_S": "1"}


def logged(tracking_uri: str, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(answers, labels) in the log, read back as the trainer (any principal may read it)."""
    import gzip

    store = ArtifactProxyStore(tracking_uri, "predictions", ("trainer", TEST_PASSWORDS["trainer"]))
    answers: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    try:
        for path, _ in store.list(f"model={name}"):
            lines = gzip.decompress(store.get(path, 1 << 30)).splitlines()
            for line in lines:
                (labels if "/feedback/" in path else answers).extend(expand(json.loads(line)))
    finally:
        store.close()
    return answers, labels


def ready(url: str) -> bool:
    """Ready in every worker (each loads the model itself; fresh connections reach either)."""
    return all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200 for _ in range(12))


def send(url: str, rows: np.ndarray, prefix: str) -> list[str]:
    """One request per row, each with its own X-Request-Id; every answer must be a 200."""
    ids = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i, row in enumerate(rows):
            request_id = f"{prefix}-{i}"
            response = client.post(
                "/predict", json={"features": row.tolist()}, headers={"X-Request-Id": request_id}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id
            ids.append(request_id)
    return ids


def test_every_answer_is_logged_after_sigterm_labels_join_and_train_reads_the_log(
    tracking_server: MlflowService,
    model_name: str,
    start_server: Callable[..., Service],
    tmp_path: Path,
) -> None:
    uri = tracking_server.uri
    train_version(uri, model_name)
    server = start_server(uri, model_name, workers=2, extra_env={"MODELOPS_PREDICTION_LOG_FLUSH_S": "60"})
    wait_for(lambda: ready(server.uri), 60, "the model to load")
    data = load_breast_cancer()
    rng = np.random.RandomState(3)
    picked = rng.choice(len(data.target), 300, replace=False)
    ids = send(server.uri, data.data[picked], "sig")
    truth = data.target[picked]

    feedback = [{"request_id": rid, "label": int(label)} for rid, label in zip(ids, truth, strict=True)]
    answer = httpx.post(f"{server.uri}/feedback", json=feedback, headers=AUTH_HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    counts = answer.json()
    # two workers: the one that gets the labels joins those of its own answers (maybe none); all are logged
    assert counts["logged"] == 300 and counts["joined"] + counts["unmatched"] == 300
    single = httpx.post(
        f"{server.uri}/feedback",
        json={"request_id": ids[0], "label": int(truth[0])},
        headers=AUTH_HEADERS,
        timeout=10,
    )
    assert single.status_code == 200 and single.json()["logged"] == 1
    metrics = httpx.get(f"{server.uri}/metrics", timeout=10).text
    assert "modelops_prediction_log_records_total" in metrics

    # the flush timer (60 s) has not fired: only the shutdown's flush can have written these
    server.stop()
    answers, labels = logged(uri, model_name)
    assert sorted({a["request_id"] for a in answers}) == sorted(ids)
    assert len(answers) == 300 and len(labels) == 301
    first = answers[0]
    assert set(first) >= {"request_id", "ts", "model", "version", "inputs", "outputs", "latency_ms"}
    assert first["model"] == model_name and len(first["inputs"]) == 30

    # the rows with labels, read through the proxy as the trainer (this process' principal)
    dataset = load_dataset(f"mlflow-artifacts:/predictions/model={model_name}", tracking_uri=uri)
    assert dataset.n_rows == 300 and dataset.n_features == 30
    assert sorted(dataset.target.tolist()) == sorted(truth.tolist())

    # needs publish.py to record a prediction-log source the way it records the built-in set (see the report)
    result = modelops(
        "train",
        "--tracking-uri",
        uri,
        "--model-name",
        model_name,
        "--data",
        f"mlflow-artifacts:/predictions/model={model_name}",
        "--promote",
        "never",
        "--output",
        "json",
        env={"MLFLOW_TRACKING_URI": uri},
        timeout_s=240,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["version"] and outcome["metrics"]["accuracy"] > 0.8


def test_with_mlflow_down_serving_is_unaffected_and_the_log_catches_up(
    tmp_path: Path, start_server: Callable[..., Service]
) -> None:
    mlflow = mlflow_server(tmp_path / "mlflow").start()
    try:
        name = f"plog-{uuid.uuid4().hex[:8]}"
        mlflow.grant(name)
        train_version(mlflow.uri, name)
        server = start_server(mlflow.uri, name, extra_env=FAST_LOG)
        wait_for(lambda: ready(server.uri), 60, "the model to load")
        rows = load_breast_cancer().data[:200]
        before = send(server.uri, rows[:50], "up")
        truth = load_breast_cancer().target[:50]
        labels = [{"request_id": rid, "label": int(y)} for rid, y in zip(before, truth, strict=True)]
        joined = httpx.post(f"{server.uri}/feedback", json=labels, headers=AUTH_HEADERS, timeout=10)
        # one worker: it holds every answer, so every label joins live
        assert joined.json() == {"joined": 50, "unmatched": 0, "logged": 50}
        metrics = httpx.get(f"{server.uri}/metrics", timeout=10).text
        assert 'modelops_live_accuracy{version="1"}' in metrics
        assert 'modelops_live_roc_auc{version="1"}' in metrics

        mlflow.stop()
        started = time.monotonic()
        during = send(server.uri, rows[50:200], "down")  # every one a 200
        assert time.monotonic() - started < 30
        assert httpx.get(f"{server.uri}/readyz", timeout=5).status_code == 200
        time.sleep(3)  # a few flushes fail meanwhile
        text = httpx.get(f"{server.uri}/metrics", timeout=5).text
        assert "modelops_prediction_log_write_errors_total" in text

        mlflow.start()  # same port, same database and artifacts
        wanted = set(before + during)
        wait_for(
            lambda: {a["request_id"] for a in logged(mlflow.uri, name)[0]} >= wanted,
            60,
            "the log to catch up",
        )
        server.stop()
        answers, _ = logged(mlflow.uri, name)
        assert {a["request_id"] for a in answers} == wanted
    finally:
        mlflow.stop()
