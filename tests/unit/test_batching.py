"""The micro-batcher merges concurrent requests, never mixes models, and passes errors through."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelops.serving.batching import MicroBatcher
from modelops.serving.model import LoadedModel, Prediction


def recording_model(version: str, calls: list[int]) -> LoadedModel:
    def predict(x: np.ndarray) -> Prediction:
        calls.append(len(x))
        return Prediction(x[:, 0].astype(int) + int(version) * 100, np.column_stack([x[:, 0], -x[:, 0]]))

    return LoadedModel(
        name="m",
        version=version,
        run_id=None,
        columns=["a", "b"],
        classes=[0, 1],
        flavor="test",
        predict_fn=predict,
        example=np.zeros((1, 2)),
    )


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values])


async def arrive_and_predict(batcher: MicroBatcher, model: LoadedModel, x: np.ndarray) -> Prediction:
    with batcher.arriving_request():
        await asyncio.sleep(0)  # "parsing"
    return await batcher.predict(model, x)


def test_concurrent_requests_share_one_predict_and_get_their_own_rows() -> None:
    calls: list[int] = []
    model = recording_model("1", calls)

    async def main() -> list[Prediction]:
        batcher = MicroBatcher(max_batch_rows=100, max_wait_ms=50, inline_max_rows=64)
        batcher.start()
        try:
            return await asyncio.gather(
                *(arrive_and_predict(batcher, model, rows(i, i + 0.5)) for i in range(5))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert sum(calls) == 10 and len(calls) < 5, calls  # merged
    for i, result in enumerate(results):
        assert result.labels.tolist() == [100 + i, 100 + i]
        assert result.probabilities is not None and result.probabilities[:, 0].tolist() == [i, i + 0.5]


def test_a_lone_request_does_not_wait() -> None:
    calls: list[int] = []
    model = recording_model("1", calls)

    async def main() -> float:
        batcher = MicroBatcher(max_batch_rows=100, max_wait_ms=1000, inline_max_rows=64)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.predict(model, rows(1))
        await batcher.stop()
        return loop.time() - start

    assert asyncio.run(main()) < 0.5  # far below the 1 s max wait: nobody else was arriving


def test_a_lone_small_request_is_predicted_in_its_own_task_and_a_crowd_in_the_batchers() -> None:
    tasks: list[str] = []
    model = recording_model("1", [])
    inner = model.predict_fn

    def predict(x: np.ndarray) -> Prediction:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread
            task = None
        tasks.append(task.get_name() if task else "a thread")
        return inner(x)

    model.predict_fn = predict

    async def main() -> None:
        batcher = MicroBatcher(max_batch_rows=100, max_wait_ms=50, inline_max_rows=64)
        try:
            alone = asyncio.current_task()
            assert alone is not None
            alone.set_name("caller")
            assert (await batcher.predict(model, rows(1))).labels.tolist() == [101]
            assert tasks == ["caller"]
            big = await batcher.predict(model, rows(*range(65)))  # over inline_max_rows: the batcher's thread
            assert len(big.labels) == 65 and tasks[-1] == "a thread"
            await asyncio.gather(*(arrive_and_predict(batcher, model, rows(i)) for i in range(3)))
            assert tasks[2:] and set(tasks[2:]) == {"micro-batcher"}  # others were arriving: batched
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_rows_of_different_models_are_never_mixed() -> None:
    calls: list[int] = []
    old, new = recording_model("1", calls), recording_model("2", calls)

    async def main() -> list[Prediction]:
        batcher = MicroBatcher(max_batch_rows=100, max_wait_ms=20, inline_max_rows=0)
        try:
            return await asyncio.gather(
                *(arrive_and_predict(batcher, m, rows(i)) for i, m in enumerate([old, new, old]))
            )
        finally:
            await batcher.stop()

    first, second, third = asyncio.run(main())
    assert (
        first.labels.tolist() == [100] and second.labels.tolist() == [201] and third.labels.tolist() == [102]
    )


def test_a_failing_predict_fails_every_request_of_its_batch() -> None:
    def boom(x: np.ndarray) -> Prediction:
        raise RuntimeError("model exploded")

    model = LoadedModel(
        name="m",
        version="1",
        run_id=None,
        columns=["a", "b"],
        classes=None,
        flavor="test",
        predict_fn=boom,
        example=np.zeros((1, 2)),
    )

    async def main() -> None:
        batcher = MicroBatcher(max_batch_rows=100, max_wait_ms=5, inline_max_rows=64)
        try:
            await asyncio.gather(
                arrive_and_predict(batcher, model, rows(1)), arrive_and_predict(batcher, model, rows(2))
            )
        finally:
            await batcher.stop()

    with pytest.raises(RuntimeError, match="exploded"):
        asyncio.run(main())
