"""Adaptive micro-batcher: concurrent requests share one predict call.

A request that arrives alone is predicted at once (no added latency; a small one in the caller's task).
When other requests are being read and parsed at the same moment, the batcher waits for them, at most
`max_wait_ms`, and runs one predict over all their rows. Rows of one batch always go to the same model object: the model a
request was parsed against is the model that answers it, even across a swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from modelops.serving import metrics
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.tasks import cancel


@dataclass
class _Item:
    model: LoadedModel
    rows: np.ndarray
    future: asyncio.Future[Prediction]


class MicroBatcher:
    def __init__(self, max_batch_rows: int, max_wait_ms: float, inline_max_rows: int) -> None:
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000.0
        self.inline_max_rows = inline_max_rows
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # the batcher's task is taking batches off the queue (one may be predicting in a thread)
        self._busy = False
        self.arriving = 0  # requests being read/parsed that will submit soon

    @contextlib.contextmanager
    def arriving_request(self) -> Iterator[None]:
        """Mark a request as on its way to `predict`, so a forming batch may wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def predict(self, model: LoadedModel, rows: np.ndarray) -> Prediction:
        """Predict `rows` of one request with `model`, possibly together with other requests."""
        if self._task is None:
            self.start()
        if not self._queue and not self._busy and self.arriving == 0 and len(rows) <= self.inline_max_rows:
            # Alone: no batch to join and nobody arriving to wait for, so the batcher would predict these rows at
            # once, inline, as a batch of one. Doing it here saves the two hops through its task (issue 12).
            result = model.predict(rows)
            metrics.BATCH_ROWS.observe(len(rows))
            metrics.BATCH_REQUESTS.observe(1)
        else:
            future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
            self._queue.append(_Item(model, rows, future))
            self._wakeup.set()
            result = await future
        metrics.REQUEST_ROWS.observe(len(rows))
        metrics.ROWS_PREDICTED.inc(len(rows))
        return result

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def _queued_rows(self) -> int:
        return sum(len(item.rows) for item in self._queue)

    async def _gather(self) -> None:
        """Wait briefly while more requests are arriving and the batch has room."""
        if self.max_wait_s <= 0:
            return
        deadline = time.perf_counter() + self.max_wait_s
        while self.arriving > 0 and self._queued_rows() < self.max_batch_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):  # not wait_for: it can lose a cancellation on 3.11
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        first = self._queue.popleft()
        batch, rows = [first], len(first.rows)
        while self._queue:
            item = self._queue[0]
            if item.model is not first.model or rows + len(item.rows) > self.max_batch_rows:
                break
            batch.append(self._queue.popleft())
            rows += len(item.rows)
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._busy = True
            try:
                while self._queue:
                    await self._gather()
                    batch = self._take()
                    await self._predict(batch)
            finally:
                self._busy = False

    async def _predict(self, batch: list[_Item]) -> None:
        model = batch[0].model
        x = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
        try:
            if len(x) <= self.inline_max_rows:
                result = model.predict(x)  # tiny: a thread hop would cost more than the predict
            else:
                result = await asyncio.to_thread(model.predict, x)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        metrics.BATCH_ROWS.observe(len(x))
        metrics.BATCH_REQUESTS.observe(len(batch))
        start = 0
        for item in batch:
            end = start + len(item.rows)
            proba = None if result.probabilities is None else result.probabilities[start:end]
            if not item.future.done():
                item.future.set_result(Prediction(result.labels[start:end], proba))
            start = end
