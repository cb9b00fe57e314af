"""The prediction log in process: file layout and record format, sampling, the bounded buffer, the flush on
stop, and an object store that refuses or hangs (serving's side stays O(1) and never raises; what cannot be
written is counted, and written once the store is back)."""

from __future__ import annotations

import functools
import gc
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from modelops.monitoring import predlog
from modelops.monitoring.predlog import (
    ArtifactProxyStore,
    FeedbackItem,
    FolderStore,
    PredictionLog,
    StoreError,
    expand,
    sampled,
)
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.service import PredictionEvent
from modelops.settings import ServerSettings
from tests.unit.test_http_app import AUTH, COLUMNS, ROW, client_for, make_app, small_model

AT = 1_795_000_000.0  # 2026-11-18 UTC


@functools.cache
def model_of(version: str) -> LoadedModel:
    return small_model(version)


def event(request_id: str, rows: int = 1, version: str = "1", at: float = AT) -> PredictionEvent:
    model = model_of(version)
    x = np.tile(np.asarray(ROW, dtype=np.float64), (rows, 1))
    return PredictionEvent(at, request_id, model, x, model.predict_fn(x), 0.0042)


def records(root: Path, pattern: str = "**/*.jsonl.gz") -> list[dict[str, Any]]:
    found = []
    for path in sorted(root.glob(pattern)):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            found.extend(expand(json.loads(line)))
    return found


def counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("modelops_prediction_log_records_total", {"outcome": outcome}) or 0.0


class FlakyStore:
    """A store that refuses (transient) while `down`, and remembers what it was given."""

    shown = "flaky"

    def __init__(self) -> None:
        self.down = True
        self.files: dict[str, bytes] = {}
        self.attempts = 0

    def put(self, path: str, data: bytes) -> None:
        self.attempts += 1
        if self.down:
            raise StoreError("connection refused")
        self.files[path] = data

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return []

    def get(self, path: str, max_bytes: int) -> bytes:
        raise StoreError("no")


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A TCP server on loopback that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_flush_writes_one_gzip_jsonl_file_per_partition(tmp_path: Path) -> None:
    log = PredictionLog(FolderStore(tmp_path), "predictions", host="host/1", clock=lambda: AT)
    log.observe(event("a"))
    log.observe(event("b", rows=2))
    log.observe(event("c", version="2"))
    log.observe(event("d", at=AT + 86_400))
    log.log_labels("m", [FeedbackItem("a", 1), FeedbackItem("b", "0", row=1)])
    log.flush(time.monotonic() + 10)

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl.gz"))
    folders = sorted(f.rpartition("/")[0] for f in files)
    assert folders == [
        "predictions/model=m/feedback/date=2026-11-18",
        "predictions/model=m/version=1/date=2026-11-18",
        "predictions/model=m/version=1/date=2026-11-19",
        "predictions/model=m/version=2/date=2026-11-18",
    ]
    name = files[1].rpartition("/")[2]
    stamp, host, pid, seq = name.removesuffix(".jsonl.gz").split("-")
    assert int(stamp) > 0 and host == "host_1" and int(pid) > 0 and seq.isdigit()
    answers = records(tmp_path, "predictions/model=m/version=1/date=2026-11-18/*")
    assert [(r["request_id"], r["row"]) for r in answers] == [("a", 0), ("b", 0), ("b", 1)]
    first = answers[0]
    assert first["model"] == "m" and first["version"] == "1" and first["ts"] == AT
    assert first["inputs"] == dict(zip(COLUMNS, ROW, strict=True))
    assert first["outputs"]["label"] in (0, 1)
    assert set(first["outputs"]["probabilities"]) == {"0", "1"}
    assert abs(sum(first["outputs"]["probabilities"].values()) - 1) < 1e-9
    assert first["latency_ms"] == 4.2
    labels = records(tmp_path, "predictions/model=m/feedback/*/*")
    assert [(r["request_id"], r["row"], r["label"]) for r in labels] == [("a", 0, 1), ("b", 1, "0")]
    assert log.written == 7 and log.buffer_rows == 0


@pytest.mark.parametrize("outputs", ["as the model gives them", "float32 probabilities", "text labels"])
def test_consecutive_single_row_answers_share_one_columnar_line_that_expands_to_the_same_records(
    tmp_path: Path, outputs: str
) -> None:
    """What a reader gets back does not depend on how the writer grouped the answers."""
    model = model_of("4")
    rng = np.random.RandomState(3)

    def predict(x: np.ndarray) -> Prediction:
        p = model.predict_fn(x)
        assert p.probabilities is not None
        if outputs == "float32 probabilities":
            return Prediction(p.labels, p.probabilities.astype(np.float32))
        if outputs == "text labels":
            return Prediction(np.array([f"class-{v}" for v in p.labels]), p.probabilities)
        return p

    def single(request_id: str, at: float) -> PredictionEvent:
        x = rng.rand(1, len(COLUMNS))
        return PredictionEvent(at, request_id, model, x, predict(x), 0.0011)

    x3 = rng.rand(3, len(COLUMNS))
    events = [single("s0", AT), single("s1", AT + 1), single("s2", AT + 2)]
    events += [PredictionEvent(AT + 3, "m", model, x3, predict(x3), 0.002)]
    events += [single("s3", AT + 4), single("s4", AT + 5)]
    grouped = PredictionLog(FolderStore(tmp_path / "grouped"))
    one_by_one = PredictionLog(FolderStore(tmp_path / "one"))
    for e in events:
        grouped.observe(e)
        one_by_one.observe(e)
        one_by_one.flush(time.monotonic() + 10)  # alone in its flush: a line of its own
    grouped.flush(time.monotonic() + 10)
    (path,) = (tmp_path / "grouped").rglob("*.jsonl.gz")
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    assert [line.get("request_ids", line.get("request_id")) for line in lines] == [
        ["s0", "s1", "s2"],
        "m",
        ["s3", "s4"],
    ]
    expected = records(tmp_path / "one")
    assert len(expected) == 8 and expected[0]["request_id"] == "s0" and "request_ids" not in expected[0]
    assert [r for line in lines for r in expand(line)] == sorted(expected, key=lambda r: r["ts"])


def test_a_file_closes_at_its_row_limit_and_an_answer_that_cannot_be_encoded_is_counted_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predlog, "FILE_MAX_ROWS", 5)
    log = PredictionLog(FolderStore(tmp_path), flush_s=3600)
    for e in [event("a"), event("b"), event("c"), event("m", rows=4), event("d"), event("e")]:
        log.observe(e)
    log.flush(time.monotonic() + 10)
    files = sorted(tmp_path.rglob("*.jsonl.gz"), key=lambda p: int(p.name.split("-")[-1].split(".")[0]))
    per_file = [[r["request_id"] for r in records(tmp_path, str(f.relative_to(tmp_path)))] for f in files]
    assert per_file == [["a", "b", "c", "m", "m", "m", "m"], ["d", "e"]]  # closed once past 5 rows
    assert log.written == 9 and log.buffer_rows == 0

    # answers orjson cannot write (complex labels), next to good ones in the same encoding step, and one it can
    # only once made C-ordered (transposed probabilities, as some sklearn models return them)
    model = model_of("1")
    x2 = np.asarray([ROW, ROW], dtype=np.float64)
    odd = Prediction(np.array([1j]), None)
    transposed = Prediction(np.array([0, 1]), np.asfortranarray(np.array([[0.9, 0.1], [0.2, 0.8]])))
    failed_before = counter("failed")
    events = [event("x"), PredictionEvent(AT, "bad", model, x2[:1], odd, 0.001), event("y")]
    events += [PredictionEvent(AT, "bad2", model, x2, Prediction(np.array([1j, 2j]), None), 0.001)]
    events += [PredictionEvent(AT, "t", model, x2, transposed, 0.001), event("z")]
    for e in events:
        log.observe(e)
    log.flush(time.monotonic() + 10)
    assert (log.failed, log.written, log.buffer_rows) == (3, 14, 0)  # bad and bad2 lost and counted, not kept
    assert counter("failed") - failed_before == 3
    written = {(r["request_id"], r["row"]): r for r in records(tmp_path)}
    assert {"x", "y", "z", "t"} <= {k[0] for k in written} and not {"bad", "bad2"} & {k[0] for k in written}
    assert written[("t", 1)]["outputs"]["probabilities"] == {"0": 0.2, "1": 0.8}


def test_a_run_of_single_row_answers_is_cut_into_lines_of_at_most_run_max_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predlog, "RUN_MAX_ROWS", 2)
    log = PredictionLog(FolderStore(tmp_path), flush_s=3600)
    for i in range(5):
        log.observe(event(f"r{i}"))
    log.flush(time.monotonic() + 10)
    (path,) = tmp_path.rglob("*.jsonl.gz")
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    assert [line.get("request_ids", line.get("request_id")) for line in lines] == [
        ["r0", "r1"],
        ["r2", "r3"],
        "r4",
    ]


def test_sampling_is_by_request_id_so_every_worker_agrees(tmp_path: Path) -> None:
    ids = [f"req-{i}" for i in range(4000)]
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 800 < len(kept) < 1200
    assert kept == [i for i in ids if sampled(i, 0.25)]
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, 0.0) for i in ids[:100])

    log = PredictionLog(FolderStore(tmp_path), sample_rate=0.25)
    for i in ids:
        log.observe(event(i))
    assert log.buffer_rows == len(kept)
    off = ServerSettings(prediction_log_sample_rate=0, prediction_log_uri=f"file://{tmp_path}")
    assert predlog.from_settings(off) is None


def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    before = counter("dropped")
    log = PredictionLog(FolderStore(tmp_path), max_buffer_rows=5)
    for i in range(4):
        log.observe(event(f"r{i}"))
    log.observe(event("big", rows=3))  # would pass the bound: dropped whole
    log.observe(event("r4"))
    log.observe(event("r5"))
    assert log.buffer_rows == 5 and log.dropped == 4
    assert counter("dropped") - before == 4


def test_buffered_answers_cost_the_garbage_collector_nothing(tmp_path: Path) -> None:
    """Between two flushes tens of thousands of answers wait at single-row traffic: were they objects the
    collector tracks, every full collection would walk them while the event loop waits (issue 12)."""
    model = model_of("3")
    x = np.asarray([ROW], dtype=np.float64)
    log = PredictionLog(FolderStore(tmp_path), flush_s=3600)
    log.observe(
        PredictionEvent(AT, "g0", model, x, model.predict_fn(x), 0.001)
    )  # what any answer creates once
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1, 5_000):  # the events are garbage once observed, as the server's are
        log.observe(PredictionEvent(AT, f"g{i}", model, x, model.predict_fn(x), 0.001))
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # not one object per answer
    log.flush(time.monotonic() + 30)
    written = records(tmp_path)
    assert len(written) == 5_000 and {r["request_id"] for r in written} == {f"g{i}" for i in range(5_000)}
    assert written[0]["inputs"] == dict(zip(COLUMNS, ROW, strict=True)) and written[0]["version"] == "3"


def test_stop_flushes_everything_without_waiting_for_the_timer(tmp_path: Path) -> None:
    log = PredictionLog(FolderStore(tmp_path), flush_s=3600)
    log.start()
    for i in range(100):
        log.observe(event(f"r{i}"))
    started = time.monotonic()
    log.stop(timeout_s=10)
    assert time.monotonic() - started < 5
    assert sorted(r["request_id"] for r in records(tmp_path)) == sorted(f"r{i}" for i in range(100))
    assert log.failed == 0


def test_a_store_that_refuses_costs_serving_nothing_and_nothing_is_lost_once_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(predlog, "RETRY_BASE_S", 0.01)
    store = FlakyStore()
    log = PredictionLog(store, flush_s=0.05, max_buffer_rows=1000)
    log.start()
    try:
        for i in range(300):
            log.observe(event(f"r{i}"))
        deadline = time.monotonic() + 5
        while store.attempts < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.attempts >= 6 and log.written == 0 and log.buffer_rows == 300
        store.down = False
        deadline = time.monotonic() + 5
        while log.written < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.written == 300 and log.buffer_rows == 0 and log.dropped == 0
    finally:
        log.stop(timeout_s=5)


def test_a_hanging_store_costs_serving_nothing_memory_stays_bounded_and_losses_are_counted(
    hanging_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predlog, "RETRY_BASE_S", 0.01)
    failed_before = counter("failed")
    store = ArtifactProxyStore(hanging_server, "predictions", ("operator", "x"), timeout_s=0.3)
    log = PredictionLog(store, flush_s=0.05, max_buffer_rows=500)
    log.start()
    events = [event(f"r{i}") for i in range(2000)]
    started = time.perf_counter()
    for e in events:
        log.observe(e)  # never raises, never waits for the store
    per_call_s = (time.perf_counter() - started) / len(events)
    assert per_call_s < 0.001
    assert log.buffer_rows == 500 and log.dropped == 1500
    log.stop(timeout_s=3)
    assert log.written == 0 and log.failed == 500
    assert counter("failed") - failed_before == 500


def test_a_permanent_refusal_is_counted_failed_and_not_retried(tmp_path: Path) -> None:
    class Refusing(FlakyStore):
        def put(self, path: str, data: bytes) -> None:
            self.attempts += 1
            raise StoreError("HTTP 403 Permission denied", permanent=True)

    store = Refusing()
    log = PredictionLog(store)
    log.observe(event("a"))
    log.flush(time.monotonic() + 5)
    assert store.attempts == 1 and log.failed == 1 and log.buffer_rows == 0


def test_a_server_with_only_a_read_credential_drops_and_counts(tmp_path: Path) -> None:
    settings = ServerSettings(tracking_username="model-server", tracking_password="x")
    log = predlog.from_settings(settings)
    assert log is not None and log.store is None
    log.observe(event("a"))
    assert log.dropped == 1 and log.buffer_rows == 0
    assert log.log_labels("m", [FeedbackItem("a", 1)]) == 0


@pytest.mark.anyio
async def test_answers_through_the_http_app_reach_the_log_with_their_request_id(tmp_path: Path) -> None:
    app = make_app(model=small_model(), prediction_log_uri=f"file://{tmp_path}")
    async for client in client_for(app):
        answer = await client.post(
            "/predict", {"features": {"a": 0.1, "b": 0.2, "c": 0.3}}, headers={"X-Request-Id": "abc-1"}
        )
        assert answer.status_code == 200
        generated = await client.post("/predict", {"instances": [ROW, ROW]}, headers=AUTH)
        assert generated.status_code == 200
    log: PredictionLog = app.state.prediction_log
    log.stop(timeout_s=5)
    logged = records(tmp_path)
    assert [(r["request_id"], r["row"]) for r in logged] == [
        ("abc-1", 0),
        (generated.headers["x-request-id"], 0),
        (generated.headers["x-request-id"], 1),
    ]
    assert logged[0]["inputs"] == {"a": 0.1, "b": 0.2, "c": 0.3}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
