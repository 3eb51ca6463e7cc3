"""EstimateBatcher: concurrent calls share one estimate_batch, off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from router import Estimate, EstimateBatcher


class _RecordingRouter:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def estimate_batch(self, prompts: list[str]) -> list[Estimate]:
        self.batches.append(list(prompts))
        self.threads.add(threading.current_thread().name)
        return [Estimate(len(p) / 100, len(p), 2 * len(p), "chat") for p in prompts]


class _FailsOn(_RecordingRouter):
    """Raises on any batch holding the poison prompt (and records only the batches it serves)."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison

    def estimate_batch(self, prompts: list[str]) -> list[Estimate]:
        if self.poison in prompts:
            raise ValueError("encoder failed")
        return super().estimate_batch(prompts)


def test_concurrent_calls_are_grouped_into_one_batch_in_a_worker_thread() -> None:
    router = _RecordingRouter()

    async def main() -> list[Estimate]:
        batcher = EstimateBatcher(router, max_batch_size=64, max_wait_s=0.01)
        results = await asyncio.gather(*(batcher.estimate("x" * n) for n in range(1, 21)))
        await batcher.aclose()
        return list(results)

    results = asyncio.run(main())
    assert [r.token_budget_p50 for r in results] == list(range(1, 21))
    assert len(router.batches) == 1
    assert threading.main_thread().name not in router.threads


def test_batches_never_exceed_the_max_batch_size() -> None:
    router = _RecordingRouter()

    async def main() -> None:
        batcher = EstimateBatcher(router, max_batch_size=4, max_wait_s=0.01)
        await asyncio.gather(*(batcher.estimate(str(n)) for n in range(10)))
        await batcher.aclose()

    asyncio.run(main())
    assert max(len(b) for b in router.batches) <= 4
    assert sum(len(b) for b in router.batches) == 10


def test_an_encoder_error_reaches_the_callers_and_the_batcher_keeps_serving() -> None:
    async def main() -> Estimate:
        batcher = EstimateBatcher(_FailsOn("boom"), max_wait_s=0.0)
        with pytest.raises(ValueError):
            await batcher.estimate("boom")
        result = await batcher.estimate("fine")
        await batcher.aclose()
        return result

    assert asyncio.run(main()).category == "chat"


def test_a_prompt_the_encoder_fails_on_fails_only_its_own_caller() -> None:
    router = _FailsOn("poison")

    async def main() -> list[Estimate | BaseException]:
        batcher = EstimateBatcher(router, max_batch_size=64, max_wait_s=0.01)
        prompts = ["a", "bb", "poison", "dddd"]
        calls = (batcher.estimate(p) for p in prompts)
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.aclose()
        return list(results)

    first, second, poisoned, fourth = asyncio.run(main())
    assert isinstance(poisoned, ValueError)
    estimates = [r for r in (first, second, fourth) if isinstance(r, Estimate)]
    assert [r.token_budget_p50 for r in estimates] == [1, 2, 4]
    # The batch of four raised; each prompt was then estimated alone.
    assert router.batches == [["a"], ["bb"], ["dddd"]]


def test_a_closed_batcher_refuses_new_calls() -> None:
    async def main() -> None:
        batcher = EstimateBatcher(_RecordingRouter())
        await batcher.aclose()
        with pytest.raises(RuntimeError):
            await batcher.estimate("late")

    asyncio.run(main())
