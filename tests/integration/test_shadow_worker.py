"""Shadow copies predicted in a worker process: a real signed model on disk, a real child process, a real pipe."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelops.registry import VersionInfo
from modelops.serving import metrics, routing, shadow_worker
from modelops.serving.model import LoadedModel, load_local
from modelops.serving.routing import ChallengerRunner, Faults
from modelops.serving.shadow_worker import START_TIMEOUT_S, ShadowWorker, WorkerFailed
from modelops.signing import Verifier, sign_model

DATA = load_breast_cancer(as_frame=True)
X = DATA.data.to_numpy()
NAME, RUN = "shadow-test-model", "0123456789abcdef0123456789abcdef"


def signed_model(folder: Path, private_key: Path, seed: int) -> Path:
    rows = np.random.default_rng(seed).choice(len(X), 300, replace=False)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        DATA.data.iloc[rows], DATA.target.iloc[rows]
    )
    mlflow.sklearn.save_model(
        model, str(folder), serialization_format="skops", input_example=DATA.data.head(2)
    )
    sign_model(folder, private_key, model_name=NAME, run_id=RUN)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path]) -> dict[str, object]:
    """The champion and a challenger, loaded (and verified) the way the server loads them."""
    root = tmp_path_factory.mktemp("shadow-models")
    verifier = Verifier.from_path(signing_keys[1])
    loaded = {}
    for version, seed in (("1", 1), ("2", 2)):
        folder = signed_model(root / f"v{version}", signing_keys[0], seed)
        info = VersionInfo(NAME, version, RUN, "", (), {}, 0)
        loaded[version] = load_local(folder, info, {}, verifier)
    return {"champion": loaded["1"], "challenger": loaded["2"], "verifier": verifier, "root": root}


def copied(model: LoadedModel, download: Path) -> LoadedModel:
    """`model` with its files copied into `download/model`, as a server's download of it."""
    assert model.model_path is not None
    shutil.copytree(model.model_path, download / "model")
    return LoadedModel(**{**model.__dict__, "model_path": download / "model", "local_dir": download})


def champion_answer(models: dict[str, object], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    answer = models["champion"].predict(rows)  # type: ignore[attr-defined]
    return np.asarray(answer.labels), answer.probabilities


def test_the_worker_compares_the_challenger_with_the_champion_in_its_own_low_priority_process(
    models: dict[str, object],
) -> None:
    challenger: LoadedModel = models["challenger"]  # type: ignore[assignment]
    worker = ShadowWorker(challenger, models["verifier"], Faults(), timeout_s=30)  # type: ignore[arg-type]
    try:
        worker.wait_ready()
        assert worker.pid is not None and worker.pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == 19  # the kernel serves the champion first
        assert (
            os.sched_getscheduler(worker.pid) == os.SCHED_IDLE
        )  # ... at once, not at the end of a time slice
        rows = X[:200]
        labels, probabilities = champion_answer(models, rows)
        positive = probabilities[:, -1]
        summary = worker.call(rows, labels, probabilities)
        mine = challenger.predict(rows)  # what the challenger answers in this process
        assert summary.rows == 200
        assert summary.agree == int(np.count_nonzero(np.asarray(mine.labels) == labels))
        assert summary.abs_delta == pytest.approx(float(np.abs(mine.probabilities[:, -1] - positive).sum()))
        assert dict(summary.labels) == {
            int(v): int(c) for v, c in zip(*np.unique(mine.labels, return_counts=True), strict=True)
        }
        assert summary.bins is not None and sum(summary.bins) == 200
        assert summary.latency_s >= 0
        # the same worker answers again (one process per challenger, not per batch)
        again = worker.call(rows[:5], labels[:5], probabilities[:5])
        assert again.rows == 5 and worker.alive
    finally:
        worker.close()
    assert not worker.alive


def test_a_failing_challenger_is_an_error_a_slow_one_reports_its_time_and_a_hung_one_is_killed(
    models: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger: LoadedModel = models["challenger"]  # type: ignore[assignment]
    rows = X[:10]
    labels, probabilities = champion_answer(models, rows)
    failing = ShadowWorker(challenger, models["verifier"], Faults(error_rate=1.0), timeout_s=30)  # type: ignore[arg-type]
    try:
        with pytest.raises(WorkerFailed, match="injected fault"):
            failing.call(rows, labels, probabilities)
        assert failing.alive  # an error is the challenger's answer, not a reason to restart it
    finally:
        failing.close()
    # slower than its timeout: answered, with its own time (the runner counts it as a timeout, not the server's load)
    slow = ShadowWorker(challenger, models["verifier"], Faults(delay_s=0.6), timeout_s=0.5)  # type: ignore[arg-type]
    try:
        assert slow.call(rows, labels, probabilities).latency_s >= 0.6 and slow.alive
    finally:
        slow.close()
    # hung: killed at the safety limit (10x the timeout, here 5 s), not left sleeping
    monkeypatch.setattr(shadow_worker, "WALL_LIMIT_MIN_S", 1.0)
    stalled = ShadowWorker(challenger, models["verifier"], Faults(delay_s=60), timeout_s=0.5)  # type: ignore[arg-type]
    try:
        stalled.wait_ready()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            stalled.call(rows, labels, probabilities)
        assert time.monotonic() - started < 15, "the caller waited for the hung challenger"
        assert not stalled.alive
    finally:
        stalled.close()


def test_the_worker_verifies_the_files_again_and_refuses_a_tampered_model(
    models: dict[str, object], tmp_path: Path
) -> None:
    tampered = copied(models["challenger"], tmp_path)  # type: ignore[arg-type]
    assert tampered.model_path is not None
    mlmodel = tampered.model_path / "MLmodel"
    mlmodel.write_text(mlmodel.read_text() + "\n# changed after the server checked it\n")
    worker = ShadowWorker(tampered, models["verifier"], Faults(), timeout_s=30)  # type: ignore[arg-type]
    try:
        with pytest.raises(WorkerFailed, match="files differ from its signature"):
            worker.wait_ready()
    finally:
        worker.close()
    assert START_TIMEOUT_S > 30  # a slow start on a busy machine is waited for, not taken for a failure


def test_the_runner_sends_shadow_copies_to_the_worker_and_counts_every_one(models: dict[str, object]) -> None:
    challenger: LoadedModel = models["challenger"]  # type: ignore[assignment]
    champion: LoadedModel = models["champion"]  # type: ignore[assignment]

    def count(outcome: str) -> float:
        return float(metrics.SHADOW_REQUESTS.labels(outcome)._value.get())

    def rows_counted() -> float:
        return sum(float(metrics.SHADOW_ROWS.labels(a)._value.get()) for a in ("agree", "disagree"))

    async def scenario() -> tuple[float, float, int | None]:
        runner = ChallengerRunner(30, 1000, verifier=models["verifier"])  # type: ignore[arg-type]
        runner.start()
        compared, counted = count("compared"), rows_counted()
        try:
            for i in range(50):
                rows = X[i : i + 1]
                runner.offer(challenger, rows, champion.predict(rows))
            deadline = time.monotonic() + START_TIMEOUT_S
            while count("compared") - compared < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            pid = runner.worker.pid if runner.worker is not None else None
        finally:
            await runner.stop()
        return count("compared") - compared, rows_counted() - counted, pid

    compared, counted, pid = asyncio.run(scenario())
    assert compared == 50 and counted == 50
    assert pid is not None  # predicted in the worker process, not in the server's threads


def test_a_worker_that_could_not_start_is_tried_again_later_and_threads_predict_meanwhile(
    models: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger: LoadedModel = models["challenger"]  # type: ignore[assignment]
    champion: LoadedModel = models["champion"]  # type: ignore[assignment]
    starts: list[str] = []

    def flaky_start(*args: object, **kwargs: object) -> ShadowWorker:
        starts.append("refused" if not starts else "started")
        if len(starts) == 1:
            raise OSError("fork failed: resource temporarily unavailable")  # as a full process table answers
        return ShadowWorker(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(routing, "ShadowWorker", flaky_start)
    monkeypatch.setattr(routing, "SHADOW_WORKER_RETRY_S", 1.0)

    def compared() -> float:
        return float(metrics.SHADOW_REQUESTS.labels("compared")._value.get())

    async def offer_and_wait(runner: ChallengerRunner, i: int) -> None:
        before = compared()
        runner.offer(challenger, X[i : i + 1], champion.predict(X[i : i + 1]))
        deadline = time.monotonic() + START_TIMEOUT_S
        while compared() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert compared() == before + 1

    async def scenario() -> tuple[int | None, int | None, list[str], int | None]:
        runner = ChallengerRunner(30, 1000, verifier=models["verifier"])  # type: ignore[arg-type]
        runner.start()
        try:
            await offer_and_wait(runner, 0)  # the start fails: this copy is predicted in a thread
            after_failure = runner.worker.pid if runner.worker is not None else None
            await offer_and_wait(runner, 1)  # before the retry delay: threads again, no new start
            tried_early = list(starts)
            await asyncio.sleep(1.1)
            await offer_and_wait(runner, 2)  # after it: a worker starts and predicts
            later = runner.worker.pid if runner.worker is not None else None
            # a worker that dies (killed, out of memory) is not restarted for every batch either: the next delay
            # (doubled: the second failure) passes first, its copies go to threads meanwhile
            assert later is not None
            os.kill(later, signal.SIGKILL)
            await asyncio.to_thread(runner.worker._process.wait, 10)  # type: ignore[union-attr]
            await offer_and_wait(runner, 3)
            assert runner.worker is None and starts == ["refused", "started"]
            await asyncio.sleep(2.1)
            await offer_and_wait(runner, 4)
            restarted = runner.worker.pid if runner.worker is not None else None
            return after_failure, later, tried_early, restarted
        finally:
            await runner.stop()

    after_failure, later, tried_early, restarted = asyncio.run(scenario())
    assert after_failure is None and tried_early == ["refused"]
    assert restarted is not None and restarted != later and starts == ["refused", "started", "started"]


def test_the_worker_keeps_its_own_files_when_the_server_unloads_the_challenger_while_it_starts(
    models: dict[str, object], tmp_path: Path
) -> None:
    download = tmp_path / "download"
    mine = copied(models["challenger"], download)  # type: ignore[arg-type]
    worker = ShadowWorker(mine, models["verifier"], Faults(), timeout_s=30)  # type: ignore[arg-type]
    try:
        mine.release()  # the rollout ended: the server deletes its download at once
        assert not download.exists()
        worker.wait_ready()
        rows = X[:20]
        labels, probabilities = champion_answer(models, rows)
        assert worker.call(rows, labels, probabilities).rows == 20
        files = worker.files
        assert (
            files.parent == tmp_path
        )  # next to the server's downloads (a writable, cleaned-at-start folder)
    finally:
        worker.close()
    assert not files.exists()  # its copy goes with it


def test_copies_of_an_unloaded_challenger_are_dropped_not_predicted(models: dict[str, object]) -> None:
    challenger: LoadedModel = models["challenger"]  # type: ignore[assignment]
    champion: LoadedModel = models["champion"]  # type: ignore[assignment]
    gone = LoadedModel(**{**challenger.__dict__, "local_dir": None, "released": True})

    async def scenario() -> tuple[float, float, object]:
        runner = ChallengerRunner(30, 1000, verifier=models["verifier"])  # type: ignore[arg-type]
        runner.start()
        dropped, compared = (
            float(metrics.SHADOW_REQUESTS.labels(o)._value.get()) for o in ("dropped", "compared")
        )
        try:
            for i in range(5):
                runner.offer(gone, X[i : i + 1], champion.predict(X[i : i + 1]))
            deadline = time.monotonic() + 30
            while (
                metrics.SHADOW_REQUESTS.labels("dropped")._value.get() - dropped < 5
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
            worker = runner.worker
        finally:
            await runner.stop()
        return (
            metrics.SHADOW_REQUESTS.labels("dropped")._value.get() - dropped,
            metrics.SHADOW_REQUESTS.labels("compared")._value.get() - compared,
            worker,
        )

    dropped, compared, worker = asyncio.run(scenario())
    assert dropped == 5 and compared == 0 and worker is None  # no worker started for a rollout that is over


def test_the_worker_inherits_no_secret_and_no_metrics_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its metrics would merge into the server's (a 'no model loaded' gauge at 0 among them)."""
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-secret")
    monkeypatch.setenv("MODELOPS_ADMIN_TOKEN", "another-secret")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = shadow_worker.child_environment()
    assert "MLFLOW_TRACKING_PASSWORD" not in env and "MODELOPS_ADMIN_TOKEN" not in env
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["OMP_NUM_THREADS"] == "1"
