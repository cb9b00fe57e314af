"""Champion/challenger routing during a rollout, the same on every replica.

A request goes to the challenger when a sticky hash of its routing key (X-Request-Id by default) falls under the
rollout's current percentage: a client that repeats its key always meets the same version, and every replica makes
the same choice for a key. The rollout's state (challenger version, percentage, mode) comes from the registry
(rollout/state.py); `ChallengerFollower` polls it and keeps the challenger loaded (verified like any version).

The challenger never runs on the event loop: a slow or stalled challenger must not delay the champion's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from modelops.errors import ModelOpsError, RegistryError
from modelops.registry import Registry
from modelops.rollout.state import ROLLOUT_TAG, RolloutState
from modelops.serving import metrics
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.shadow_worker import ShadowWorker, WorkerFailed, agreement, positive_class
from modelops.serving.store import freeze_long_lived_objects
from modelops.serving.tasks import cancel
from modelops.serving.watcher import AliasWatcher
from modelops.signing import Verifier

log = logging.getLogger(__name__)

BUCKETS = 10_000  # percentages to two decimals
# Rows waiting in the shadow queue at most (about 24 MB at 30 float64 features), whatever the request count.
SHADOW_QUEUE_MAX_ROWS = 100_000
# Shadow copies are predicted together (see ChallengerRunner._next_batch): at most this many rows per call, after
# waiting at most this long for more copies to arrive. Nobody waits for a shadow answer.
SHADOW_BATCH_ROWS = 256
SHADOW_BATCH_WAIT_S = 0.1
# A shadow worker process with no copy to predict for this long is stopped (the rollout is over, or moved on).
SHADOW_WORKER_IDLE_S = 30.0
# a challenger whose worker could not start uses threads, and its worker is tried again after this long (doubling
# after each failure, up to SHADOW_WORKER_RETRY_MAX_S): a failure may pass (memory, a full process table)
SHADOW_WORKER_RETRY_S = 30.0
SHADOW_WORKER_RETRY_MAX_S = 600.0


class ChallengerBusy(Exception):
    """Every challenger thread is taken: the champion answers, and the challenger is not blamed."""


def bucket(key: str) -> int:
    """The key's place in 0..9999: a stable hash, so every replica and every restart agree."""
    digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def selected(key: str, percent: float) -> bool:
    """Whether a request with routing key `key` belongs to the `percent` share."""
    return bucket(key) < percent * (BUCKETS // 100)


class ChallengerFollower:
    """Keeps this process's view of the rollout: the state from the registry and the challenger loaded."""

    def __init__(self, registry: Registry, loader: AliasWatcher, poll_interval_s: float) -> None:
        self.registry = registry
        self.loader = loader
        self.poll_interval_s = poll_interval_s
        self.state: RolloutState | None = None
        self.model: LoadedModel | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refused: str | None = None  # a version that failed to load: not retried every poll
        self._percent_labels: tuple[str, str] | None = None

    def active(self) -> tuple[RolloutState, LoadedModel] | None:
        """The running rollout and its loaded challenger, or None (then the champion takes everything)."""
        state, model = self.state, self.model
        if state is None or model is None or not state.running or model.version != state.version:
            return None
        return state, model

    async def sync_once(self) -> None:
        raw = await asyncio.to_thread(self.registry.model_tag, ROLLOUT_TAG)
        state = RolloutState.parse(raw)
        self.state = state
        if state is not None and state.running:
            if (self.model is None or self.model.version != state.version) and self._refused != state.version:
                await self._load(state.version)
        elif self.model is not None:
            log.info(
                "rollout of v%s is over (%s): challenger unloaded", self.model.version, state and state.state
            )
            self._drop()
        active = self.active()
        # series are zeroed, not removed: prometheus_client cannot remove them in multi-process mode
        labels = (active[1].version, active[0].mode) if active is not None else None
        if self._percent_labels is not None and self._percent_labels != labels:
            metrics.ROLLOUT_PERCENT.labels(*self._percent_labels).set(0)
        if active is not None and labels is not None:
            metrics.ROLLOUT_PERCENT.labels(*labels).set(active[0].percent)
        self._percent_labels = labels

    async def _load(self, version: str) -> None:
        info = await asyncio.to_thread(self.registry.get_version, version)
        try:
            model = await self.loader.load(info)
        except ModelOpsError as exc:
            self._refused = version
            log.error("challenger v%s cannot be served: %s; the champion takes all traffic", version, exc)
            return
        old, self.model = self.model, model
        if old is not None:
            old.release()
        # like the champion's: the challenger's objects out of the collector's full passes (measured: they
        # raised the champion's p99 by ~15% while a challenger was loaded, whether it predicted or not); without a
        # full collection first, which would stop the champion's requests for ~200 ms at every rollout's start
        freeze_long_lived_objects(collect=False)
        log.info("challenger v%s loaded", version)

    def _drop(self) -> None:
        old, self.model = self.model, None
        if old is not None:
            old.release()

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
                self.last_error = None
            except RegistryError as exc:  # keep the last known state: the rollout goes on as it was
                self.last_error = exc.message
                log.warning("rollout poll: %s", exc.message)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("rollout poll failed unexpectedly")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):  # not wait_for: see _take
                    await self._wake.wait()

    def wake(self) -> None:
        """Poll now (after this process changed the rollout)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="rollout-follower")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._drop()


@dataclass(frozen=True)
class Faults:
    """Faults injected into the challenger's predictions (settings `fault_challenger_*`), so that an operator
    can rehearse a bad rollout (and the tests run one) with any model: the rollout must abort, and no client may
    see the faults. They never touch the champion."""

    delay_s: float = 0.0
    error_rate: float = 0.0

    def __bool__(self) -> bool:
        return self.delay_s > 0 or self.error_rate > 0

    def wrap(self, model: LoadedModel) -> Callable[[np.ndarray], Prediction]:
        if not self:
            return model.predict

        def predict(rows: np.ndarray) -> Prediction:
            if self.delay_s:
                time.sleep(self.delay_s)
            if random.random() < self.error_rate:  # a rehearsal's dice, not a secret
                raise RuntimeError(f"injected fault (challenger v{model.version})")
            return model.predict(rows)

        return predict


class ChallengerRunner:
    """Runs challenger predictions in their own threads with a deadline, and shadow copies from a bounded queue:
    in a worker process of their own (shadow_worker.py) when the challenger's files can be loaded there, else in
    the threads."""

    def __init__(
        self,
        timeout_s: float,
        queue_requests: int,
        threads: int = 4,
        faults: Faults | None = None,
        verifier: Verifier | None = None,
        allow_pyfunc: bool = False,
    ) -> None:
        self.timeout_s = timeout_s
        self.faults = faults or Faults()
        self.threads = threads
        self.verifier = verifier
        self.allow_pyfunc = allow_pyfunc
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="challenger")
        # the one thread that talks to the shadow worker (it waits on the pipe without the interpreter lock)
        self.worker_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow-worker")
        self.worker: ShadowWorker | None = None
        # the challenger a worker could not start for, or whose worker exited: its copies use threads until
        # _worker_retry_at (weak: it keeps no model alive); its failures so far set the next delay
        self._worker_refused: weakref.ref[LoadedModel] | None = None
        self._worker_retry_at = 0.0
        self._worker_failures = 0
        self.queue: asyncio.Queue[_Copy] = asyncio.Queue(queue_requests)
        self.queued_rows = 0
        self.running = 0  # predictions in the pool, including timed-out ones still running
        self._held: _Copy | None = None  # a copy taken from the queue that starts the next batch
        self._task: asyncio.Task[None] | None = None

    def _done(self, _: object) -> None:
        self.running -= 1

    async def predict(self, model: LoadedModel, rows: np.ndarray) -> tuple[Prediction, float]:
        """The challenger's prediction and its latency; raises on its failure or after the deadline, and
        ChallengerBusy (not the challenger's fault: not counted against it) when every thread is taken, so a
        burst never turns waiting for a thread into challenger timeouts."""
        if self.running >= self.threads:
            raise ChallengerBusy(f"all {self.threads} challenger threads are busy")
        start = time.perf_counter()
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self.pool, self.faults.wrap(model), rows)
        future.add_done_callback(self._done)
        async with asyncio.timeout(self.timeout_s):  # not wait_for: see _take
            result = await asyncio.shield(future)
        if len(result.labels) != len(rows):
            raise ValueError(
                f"challenger v{model.version} answered {len(result.labels)} labels for {len(rows)} rows"
            )
        return result, time.perf_counter() - start

    def offer(self, model: LoadedModel, rows: np.ndarray, champion: Prediction) -> None:
        """Queue a copy for the challenger (shadow mode); dropped and counted when the queue is full."""
        if (
            self.queued_rows + len(rows) > SHADOW_QUEUE_MAX_ROWS
        ):  # bounded by rows too: copies hold their rows
            metrics.SHADOW_REQUESTS.labels("dropped").inc()
            return
        try:
            self.queue.put_nowait(_Copy(model, rows, champion))
        except asyncio.QueueFull:
            metrics.SHADOW_REQUESTS.labels("dropped").inc()
            return
        self.queued_rows += len(rows)

    async def _next_batch(self) -> list[_Copy]:
        """The copies to predict together: the oldest waiting one, then what waits or arrives within
        SHADOW_BATCH_WAIT_S (no wait when a full batch is queued) for the same model, up to SHADOW_BATCH_ROWS
        rows. One call for many copies: each call has a fixed cost (a framework's input checks, a trip to the
        worker process), paid once per batch instead of once per copy."""
        first = self._held if self._held is not None else await self._take()
        self._held = None
        batch, rows = [first], len(first.rows)
        if rows + self.queued_rows < SHADOW_BATCH_ROWS:  # a full batch is not waiting yet: let one gather
            await asyncio.sleep(SHADOW_BATCH_WAIT_S)
        while not self.queue.empty() and rows < SHADOW_BATCH_ROWS:
            nxt = self.queue.get_nowait()
            self.queued_rows -= len(nxt.rows)
            if nxt.model is not first.model or rows + len(nxt.rows) > SHADOW_BATCH_ROWS:
                self._held = nxt  # the first of the next batch
                break
            batch.append(nxt)
            rows += len(nxt.rows)
        return batch

    async def _take(self) -> _Copy:
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that comes as the
                # queue hands over a copy, and stop() then waits for this task forever
                async with asyncio.timeout(SHADOW_WORKER_IDLE_S):
                    copy = await self.queue.get()
                break
            except TimeoutError:
                await self._close_worker("idle")  # the shadow rollout is over (or paused)
        self.queued_rows -= len(copy.rows)
        return copy

    async def _shadow(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._shadow_batch(batch)
            except Exception:  # a bug here must not end shadow comparisons for the rest of the process's life
                log.exception("shadow batch of %d copies failed", len(batch))
                metrics.SHADOW_REQUESTS.labels("error").inc(len(batch))

    async def _shadow_batch(self, batch: list[_Copy]) -> None:
        model = batch[0].model
        if model.released:  # copies of a rollout that is over: the challenger is unloaded
            metrics.SHADOW_REQUESTS.labels("dropped").inc(len(batch))
            return
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([c.rows for c in batch])
        champion = _joined([c.champion for c in batch])
        worker = await self._worker_for(model)
        if model.released:  # unloaded while its worker started
            metrics.SHADOW_REQUESTS.labels("dropped").inc(len(batch))
        elif worker is not None:
            await self._shadow_in_worker(worker, model, rows, champion, len(batch))
        else:
            await self._shadow_in_threads(model, rows, champion, len(batch))

    async def _worker_for(self, model: LoadedModel) -> ShadowWorker | None:
        """The worker process for `model`, started (and the previous one stopped) when needed; None when the
        copies are predicted in threads (no files or no verifier here, or a worker could not start)."""
        if self.worker is not None and self.worker.model is model and self.worker.alive:
            return self.worker
        exited = self.worker is not None and self.worker.model is model and not self.worker.alive
        await self._close_worker("exited" if exited else "replaced")
        if exited:  # died or was killed (a hung call): not restarted for every batch, but after the delay
            log.error(
                "the shadow worker of v%s exited: its copies are predicted in threads, %s",
                model.version,
                self._refuse(model),
            )
        refused = self._worker_refused() if self._worker_refused is not None else None
        if refused is not model:
            self._worker_failures = 0
        elif time.monotonic() < self._worker_retry_at:
            return None
        if self.verifier is None or model.model_path is None or model.released:
            return None
        loop = asyncio.get_running_loop()
        log.info("starting a shadow worker for v%s", model.version)
        try:
            self.worker = await loop.run_in_executor(
                self.worker_pool,
                partial(ShadowWorker, allow_pyfunc=self.allow_pyfunc),
                model,
                self.verifier,
                self.faults,
                self.timeout_s,
            )
        except Exception as exc:  # cannot spawn here, or the files are gone: the threads do it
            log.error(
                "no shadow worker process for v%s (%s): its copies are predicted in threads, %s",
                model.version,
                exc,
                self._refuse(model),
            )
            return None
        try:  # in self.worker while it starts, so that stop() ends it
            await loop.run_in_executor(self.worker_pool, self.worker.wait_ready)
        except (WorkerFailed, TimeoutError) as exc:
            retry = self._refuse(model)
            if not model.released:
                log.error("%s; its copies are predicted in threads, %s", exc, retry)
            await self._close_worker("did not start")
            return None
        log.info("shadow copies of v%s are predicted in worker process %s", model.version, self.worker.pid)
        return self.worker

    def _refuse(self, model: LoadedModel) -> str:
        """Note that `model`'s worker did not start; when it is tried again, as words for the log."""
        self._worker_refused = weakref.ref(model)
        delay = min(SHADOW_WORKER_RETRY_S * 2 ** min(self._worker_failures, 16), SHADOW_WORKER_RETRY_MAX_S)
        self._worker_failures += 1
        self._worker_retry_at = time.monotonic() + delay
        return f"and a worker is tried again in {delay:g} s"

    async def _close_worker(self, why: str) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            log.info("shadow worker %s of v%s stops (%s)", worker.pid, worker.version, why)
            await asyncio.get_running_loop().run_in_executor(self.worker_pool, worker.close)

    async def _shadow_in_worker(
        self, worker: ShadowWorker, model: LoadedModel, rows: np.ndarray, champion: Prediction, copies: int
    ) -> None:
        try:
            summary = await asyncio.get_running_loop().run_in_executor(
                self.worker_pool, worker.call, rows, np.asarray(champion.labels), champion.probabilities
            )
        except TimeoutError:  # no answer within the safety limit (10x the timeout): hung, and killed
            _count_failure(model, "timeout", copies)
            return
        except WorkerFailed as exc:
            _count_failure(model, "error", copies)
            log.debug("shadow prediction of v%s failed: %s", model.version, exc)
            return
        if summary.latency_s > self.timeout_s:  # the challenger's own time (CPU and any rehearsal delay)
            _count_failure(model, "timeout", copies)
            return
        metrics.SHADOW_REQUESTS.labels("compared").inc(copies)
        series = metrics.version_series(model.version)
        series.ok.inc()
        series.latency.observe(summary.latency_s)
        metrics.add_counts(series, summary.labels, summary.bins)
        count_agreement(summary.agree, summary.rows, summary.abs_delta)

    async def _shadow_in_threads(
        self, model: LoadedModel, rows: np.ndarray, champion: Prediction, copies: int
    ) -> None:
        try:
            result, latency_s = await self.predict(model, rows)
        except ChallengerBusy:
            metrics.SHADOW_REQUESTS.labels("dropped").inc(copies)
            await asyncio.sleep(0.01)  # its threads are stuck (timed out, still running): let them finish
            return
        except TimeoutError:
            _count_failure(model, "timeout", copies)
            return
        except Exception as exc:
            _count_failure(model, "error", copies)
            log.debug("shadow prediction of v%s failed: %s", model.version, exc)
            return
        metrics.SHADOW_REQUESTS.labels("compared").inc(copies)
        # the analysis counts the challenger's calls (one failure is one error, one latency), its rows by row
        metrics.observe_version(model.version, result.labels, result.probabilities, latency_s)
        compare(champion, result)

    def start(self) -> None:
        self._task = asyncio.create_task(self._shadow(), name="shadow")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.worker_pool.shutdown(wait=False, cancel_futures=True)


def _count_failure(model: LoadedModel, outcome: str, copies: int) -> None:
    """A failed challenger call on a batch of shadow copies: its copies by outcome, one error of the version."""
    metrics.SHADOW_REQUESTS.labels(outcome).inc(copies)
    metrics.VERSION_REQUESTS.labels(model.version, "error").inc()


def compare(champion: Prediction, challenger: Prediction) -> None:
    """Agreement and probability difference of two answers to the same rows, into the shadow metrics."""
    positive, classes = positive_class(champion.probabilities)
    agree, delta = agreement(champion.labels, positive, classes, challenger.labels, challenger.probabilities)
    count_agreement(agree, len(champion.labels), delta)


def count_agreement(agree: int, rows: int, abs_delta: float | None) -> None:
    if agree:
        metrics.SHADOW_ROWS.labels("agree").inc(agree)
    if rows - agree:
        metrics.SHADOW_ROWS.labels("disagree").inc(rows - agree)
    if abs_delta is not None:
        metrics.SHADOW_ABS_DELTA.inc(abs_delta)


def _joined(answers: list[Prediction]) -> Prediction:
    """The champion's answers to a batch of copies, as one answer to their rows in order."""
    if len(answers) == 1:
        return answers[0]
    probabilities = [a.probabilities for a in answers]
    joined = None
    if (
        all(p is not None for p in probabilities)
        and len({p.shape[1:] for p in probabilities if p is not None}) == 1
    ):
        joined = np.concatenate([p for p in probabilities if p is not None])
    return Prediction(np.concatenate([np.asarray(a.labels) for a in answers]), joined)


@dataclass(frozen=True)
class _Copy:
    model: LoadedModel
    rows: np.ndarray
    champion: Prediction
