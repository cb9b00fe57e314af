"""Feedback: POST /feedback joins labels to this worker's answers (one label or a batch), refuses bad input
with a 4xx naming the field, logs every label; live accuracy / ROC AUC per version; the offline join and
`load_dataset` on a prediction-log folder."""

from __future__ import annotations

import gc
import json
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sklearn.metrics import roc_auc_score

from modelops.errors import DataError
from modelops.monitoring.feedback import FeedbackJoin, labelled_records
from modelops.monitoring.predlog import FeedbackItem, FolderStore, PredictionLog
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.service import PredictionEvent
from modelops.training.data import load_dataset
from tests.unit.test_http_app import AUTH, ROW, Client, client_for, make_app, small_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def answer(request_id: str, model: LoadedModel, labels: list[Any], scores: list[float]) -> PredictionEvent:
    proba = np.column_stack([1 - np.asarray(scores), np.asarray(scores)])
    rows = np.zeros((len(labels), 3))
    return PredictionEvent(time.time(), request_id, model, rows, Prediction(np.asarray(labels), proba), 0.001)


def gauge(name: str, version: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"version": version})


async def predict(client: Client, request_id: str, rows: int = 1) -> None:
    body = {"features": ROW} if rows == 1 else {"instances": [ROW] * rows}
    response = await client.post("/predict", body, headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


async def test_labels_join_to_this_workers_answers_one_or_a_batch(tmp_path: Path) -> None:
    app = make_app(model=small_model("7"), prediction_log_uri=f"file://{tmp_path}")
    async for client in client_for(app):
        await predict(client, "req-1")
        await predict(client, "req-2", rows=3)
        one = await client.post("/feedback", {"request_id": "req-1", "label": 1}, headers=AUTH)
        assert one.status_code == 200
        assert one.json() == {"joined": 1, "unmatched": 0, "logged": 1}
        batch = await client.post(
            "/feedback",
            [
                {"request_id": "req-2", "label": 0, "row": 2},
                {"request_id": "req-2", "label": "1", "row": 0},
                {"request_id": "req-2", "label": 1, "row": 3},  # no such row
                {"request_id": "elsewhere", "label": 0},  # answered by another worker (or never)
            ],
            headers=AUTH,
        )
        assert batch.status_code == 200
        assert batch.json() == {"joined": 2, "unmatched": 2, "logged": 4}
    assert gauge("modelops_live_labels", "7") == 3
    assert gauge("modelops_live_accuracy", "7") is not None
    app.state.prediction_log.stop(timeout_s=5)
    labels = sorted(p for p in tmp_path.rglob("*.jsonl.gz") if "/feedback/" in p.as_posix())
    assert labels, "labels are logged for the offline join"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{not json", 400, "body"),
        ("[]", 422, "body"),
        ('"x"', 422, "body"),
        ('{"label": 1}', 422, "request_id"),
        ('{"request_id": "a b", "label": 1}', 422, "request_id"),
        ('{"request_id": 5, "label": 1}', 422, "request_id"),
        ('{"request_id": "a"}', 422, "label"),
        ('{"request_id": "a", "label": null}', 422, "label"),
        ('{"request_id": "a", "label": [1]}', 422, "label"),
        ('{"request_id": "a", "label": NaN}', 422, "label"),
        ('{"request_id": "a", "label": "' + "x" * 300 + '"}', 422, "label"),
        ('{"request_id": "a", "label": 1, "row": -1}', 422, "row"),
        ('{"request_id": "a", "label": 1, "row": true}', 422, "row"),
        ('{"request_id": "a", "label": 1, "extra": 2}', 422, "extra"),
        ('[{"request_id": "a", "label": 1}, {"request_id": "b"}]', 422, "[1].label"),
        ('[{"request_id": "a", "label": 1}, 3]', 422, "[1]"),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field(body: str, status: int, field: str) -> None:
    async for client in client_for(make_app(model=small_model())):
        response = await client.post("/feedback", content=body, headers=AUTH)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["field"] == field and error["code"] and error["message"]


async def test_too_many_labels_or_too_large_a_body_is_refused() -> None:
    async for client in client_for(make_app(model=small_model(), max_body_bytes=2000)):
        response = await client.post(
            "/feedback", [{"request_id": f"r{i}", "label": 1} for i in range(100)], headers=AUTH
        )
        assert response.status_code == 413
    async for client in client_for(make_app(model=small_model())):
        response = await client.post("/feedback", [{"request_id": "r", "label": 1}] * 10_001, headers=AUTH)
        assert response.status_code == 422 and response.json()["error"]["field"] == "body"


async def test_the_openapi_document_describes_feedback() -> None:
    async for client in client_for(make_app(model=small_model())):
        document = (await client.get("/openapi.json")).json()
        operation = document["paths"]["/feedback"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["title"] == "FeedbackRequest"
        assert {"200", "400", "413", "415", "422"} <= set(operation["responses"])


def test_live_accuracy_and_roc_auc_per_version_over_a_bounded_window() -> None:
    rng = np.random.RandomState(1)
    model = small_model("41")
    join = FeedbackJoin(max_pending_rows=10_000, window=200)
    truth = rng.randint(0, 2, 300)
    scores = np.clip(truth * 0.3 + rng.rand(300) * 0.7, 0, 1)
    predicted = (scores > 0.5).astype(int)
    for i in range(300):
        join.observe(answer(f"q{i}", model, [predicted[i]], [scores[i]]))
    joined, unmatched = join.join(FeedbackItem(f"q{i}", int(truth[i])) for i in range(300))
    assert (joined, unmatched) == (300, 0)
    last = slice(100, 300)  # the window holds the last 200
    live = join.live("41")
    assert live["labels"] == 200
    assert live["accuracy"] == pytest.approx((predicted[last] == truth[last]).mean())
    assert live["roc_auc"] == pytest.approx(roc_auc_score(truth[last], scores[last]))
    assert gauge("modelops_live_accuracy", "41") == pytest.approx(live["accuracy"])
    assert gauge("modelops_live_roc_auc", "41") == pytest.approx(live["roc_auc"])
    assert join.live("other") == {"labels": 0, "accuracy": None, "roc_auc": None}


def test_pending_answers_are_bounded_by_rows_oldest_forgotten_first() -> None:
    model = small_model("5")
    join = FeedbackJoin(max_pending_rows=10)
    for i in range(8):
        join.observe(answer(f"r{i}", model, [1, 1], [0.9, 0.9]))
    assert join.join([FeedbackItem("r0", 1), FeedbackItem("r7", 1, row=1)]) == (1, 1)
    before = REGISTRY.get_sample_value("modelops_feedback_labels_total", {"joined": "false"}) or 0
    join.join([FeedbackItem("r1", 1)])
    after = REGISTRY.get_sample_value("modelops_feedback_labels_total", {"joined": "false"}) or 0
    assert after - before == 1


def test_held_answers_cost_the_garbage_collector_nothing() -> None:
    """Tens of thousands of answers are held at single-row traffic: were they objects the collector tracks,
    every full collection would walk them all while the event loop waits (issue 12: a 20-100 ms stop, growing
    with the map, every second at c32)."""
    model = small_model("6")
    join = FeedbackJoin(max_pending_rows=20_000)
    events = [answer(f"g{i}", model, [1], [0.7]) for i in range(5_000)]
    gc.collect()
    before = len(gc.get_objects())
    for event in events:
        join.observe(event)
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # the map itself, not one object per answer
    assert join.join([FeedbackItem("g0", 1), FeedbackItem("g4999", 0)]) == (2, 0)  # all still held


def test_a_held_answer_does_not_keep_its_micro_batchs_arrays_alive() -> None:
    """An answer is a slice of its batch's result: held as is, one row would pin a whole batch (an attacker
    batching each single-row request with a large one, under a reused request id, would multiply memory)."""
    model = small_model("6")
    batch_labels, batch_scores = np.ones(10_000, dtype=np.int64), np.full((10_000, 2), 0.5)
    watch_labels, watch_scores = weakref.ref(batch_labels), weakref.ref(batch_scores)
    event = answer("one", model, [1], [0.5])
    event = replace(event, prediction=Prediction(batch_labels[:1], batch_scores[:1]))
    join = FeedbackJoin(max_pending_rows=1000)
    join.observe(event)
    del event, batch_labels, batch_scores
    gc.collect()
    assert watch_labels() is None and watch_scores() is None
    assert join.join([FeedbackItem("one", 1)]) == (1, 0)


def test_the_offline_join_keeps_labelled_rows_once_with_the_latest_label() -> None:
    answers = [
        {"request_id": "a", "row": 0, "inputs": {"x": 1}},
        {"request_id": "a", "row": 1, "inputs": {"x": 2}},
        {"request_id": "a", "row": 0, "inputs": {"x": 1}},  # written twice (a retried upload)
        {"request_id": "b", "row": 0, "inputs": {"x": 3}},
    ]
    labels = [
        {"request_id": "a", "row": 0, "label": 0, "ts": 1.0},
        {"request_id": "a", "row": 0, "label": 1, "ts": 2.0},
        {"request_id": "b", "row": 0, "label": 0, "ts": 1.0},
        {"request_id": "zzz", "row": 0, "label": 0, "ts": 1.0},
    ]
    assert labelled_records(answers, labels) == [(answers[0], 1), (answers[3], 0)]


def test_load_dataset_reads_the_labelled_rows_of_a_log_folder(tmp_path: Path) -> None:
    model = small_model("3")
    log = PredictionLog(FolderStore(tmp_path))
    rng = np.random.RandomState(0)
    for i in range(40):
        rows = rng.rand(1, 3)
        log.observe(PredictionEvent(time.time(), f"r{i}", model, rows, model.predict_fn(rows), 0.001))
    log.log_labels("m", [FeedbackItem(f"r{i}", i % 2) for i in range(30)])  # 10 answers stay unlabelled
    log.flush(time.monotonic() + 10)

    data = load_dataset(str(tmp_path / "model=m"), target="label")
    assert data.n_rows == 30 and list(data.features.columns) == ["a", "b", "c"]
    assert sorted(data.target.unique().tolist()) == [0, 1]
    # a version folder still finds the model's labels; file:// works too
    version = load_dataset(f"file://{tmp_path}/model=m/version=3", target="label")
    assert version.n_rows == 30 and version.digest
    with pytest.raises(DataError, match="download limit"):
        load_dataset(str(tmp_path), target="label", max_bytes=200)


def test_a_log_without_labels_says_so(tmp_path: Path) -> None:
    log = PredictionLog(FolderStore(tmp_path))
    log.observe(answer("a", small_model(), [1], [0.8]))
    log.flush(time.monotonic() + 10)
    with pytest.raises(DataError, match="no labelled row") as caught:
        load_dataset(str(tmp_path / "model=m"))
    assert caught.value.field == "data"
    assert json.dumps(caught.value.field)


async def test_feedback_needs_the_feedback_or_the_admin_token() -> None:
    """Labels train future models: an anonymous client must not write them."""
    label = {"request_id": "req-1", "label": 1}
    async for client in client_for(make_app(model=small_model(), feedback_token="labeller-token-0123456789")):
        assert (await client.post("/feedback", label)).status_code == 401
        wrong = await client.post("/feedback", label, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["field"] == "Authorization"
        labeller = {"Authorization": "Bearer labeller-token-0123456789"}
        assert (await client.post("/feedback", label, headers=labeller)).status_code == 200
        assert (await client.post("/feedback", label, headers=AUTH)).status_code == 200
    async for client in client_for(make_app(model=small_model(), admin_token=None)):
        disabled = await client.post("/feedback", label, headers=AUTH)
        assert (
            disabled.status_code == 403 and "MODELOPS_FEEDBACK_TOKEN" in disabled.json()["error"]["message"]
        )
