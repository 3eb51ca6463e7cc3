"""EstimateBatcher: concurrent calls share one estimate_batch, off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from router import Estimate, EstimateBatcher, Router


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


class _Blocking(_RecordingRouter):
    """Holds the worker thread until released, so the batcher is busy for as long as a test
    needs."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def estimate_batch(self, prompts: list[str]) -> list[Estimate]:
        if threading.current_thread() is not threading.main_thread():
            self.entered.set()
            self.release.wait(timeout=10)
        return super().estimate_batch(prompts)


def test_a_short_prompt_on_an_idle_batcher_is_estimated_on_the_event_loop() -> None:
    router = _RecordingRouter()

    async def main() -> tuple[Estimate, EstimateBatcher]:
        batcher = EstimateBatcher(router, inline_max_chars=20)
        result = await batcher.estimate("x" * 20)
        await batcher.aclose()
        return result, batcher

    result, batcher = asyncio.run(main())
    assert result.token_budget_p50 == 20
    assert router.threads == {threading.main_thread().name}
    assert (batcher.inline_estimates, batcher.thread_estimates) == (1, 0)


def test_a_prompt_over_the_inline_limit_goes_to_the_worker_thread() -> None:
    router = _RecordingRouter()

    async def main() -> EstimateBatcher:
        batcher = EstimateBatcher(router, inline_max_chars=20)
        await batcher.estimate("x" * 21)
        await batcher.aclose()
        return batcher

    batcher = asyncio.run(main())
    assert [name.startswith("router-batcher") for name in router.threads] == [True]
    assert (batcher.inline_estimates, batcher.thread_estimates) == (0, 1)


def test_a_short_prompt_waits_in_the_thread_while_it_is_busy() -> None:
    """Under load prompts keep batching in the thread: a short one does not jump the queue."""
    router = _Blocking()

    async def main() -> tuple[list[Estimate], EstimateBatcher]:
        batcher = EstimateBatcher(router, max_wait_s=0.0, inline_max_chars=100)
        long = asyncio.create_task(batcher.estimate("y" * 200))
        assert await asyncio.to_thread(router.entered.wait, 10)
        short = asyncio.create_task(batcher.estimate("short"))
        await asyncio.sleep(0.01)
        assert not short.done()  # it waits behind the busy thread, not on the loop
        router.release.set()
        results = [await long, await short]
        after = await batcher.estimate("idle again")
        await batcher.aclose()
        return [*results, after], batcher

    results, batcher = asyncio.run(main())
    assert [r.token_budget_p50 for r in results] == [200, 5, 10]
    assert (batcher.inline_estimates, batcher.thread_estimates) == (1, 2)
    assert router.batches[-1] == ["idle again"]


def test_an_inline_encoder_error_reaches_its_caller_and_the_next_prompt_is_served() -> None:
    async def main() -> Estimate:
        batcher = EstimateBatcher(_FailsOn("boom"), inline_max_chars=100)
        with pytest.raises(ValueError):
            await batcher.estimate("boom")
        result = await batcher.estimate("fine")
        await batcher.aclose()
        return result

    assert asyncio.run(main()).category == "chat"


def test_inline_and_thread_paths_give_identical_estimates() -> None:
    router = Router.load(cache_size=0)  # each path computes its own embeddings
    prompts = [
        "Translate 'hello' to French",
        "What is the capital of Australia?\nA. Sydney\nB. Canberra\nC. Melbourne\nD. Perth",
        "Prove that the square root of 2 is irrational, step by step.",
        "def f(x):\n    return x ** 2  # what does f(3) return?",
        "Natalia sold clips to 48 of her friends in April and half as many in May. How many?",
    ]

    async def through(inline_max_chars: int) -> tuple[list[Estimate], EstimateBatcher]:
        batcher = EstimateBatcher(router, max_wait_s=0.0, inline_max_chars=inline_max_chars)
        results = [await batcher.estimate(p) for p in prompts]
        await batcher.aclose()
        return results, batcher

    inline, on_loop = asyncio.run(through(10_000))
    threaded, in_thread = asyncio.run(through(0))
    assert on_loop.inline_estimates == len(prompts) and in_thread.thread_estimates == len(prompts)
    assert inline == threaded
