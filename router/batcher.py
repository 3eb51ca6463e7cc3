"""Async batching: concurrent estimate() calls share one encoder call in a worker thread.

A short prompt that finds the batcher idle is estimated on the event loop itself: for it the
hand-off to the thread and back costs more than the estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from router.estimate import Estimate


class BatchEstimator(Protocol):
    """Anything with estimate_batch, e.g. Router."""

    def estimate_batch(self, prompts: list[str]) -> list[Estimate]: ...


def estimate_each(router: BatchEstimator, prompts: list[str]) -> list[Estimate | Exception]:
    """One estimate per prompt in one call; if that raises, each prompt alone.

    So a prompt the encoder fails on fails only itself, not everything batched with it.
    """
    try:
        return list(router.estimate_batch(prompts))
    except Exception as exc:
        if len(prompts) == 1:
            return [exc]
    out: list[Estimate | Exception] = []
    for prompt in prompts:
        try:
            out.extend(router.estimate_batch([prompt]))
        except Exception as exc:
            out.append(exc)
    return out


class EstimateBatcher:
    """Collects requests for up to max_wait_s (or max_batch_size) and estimates them together.

    A prompt of at most inline_max_chars characters that arrives while nothing is queued or
    in the thread is estimated inline, on the event loop (0 turns that off). Must be created
    and used inside one running event loop.
    """

    def __init__(
        self,
        router: BatchEstimator,
        max_batch_size: int = 64,
        max_wait_s: float = 0.001,
        inline_max_chars: int = 0,
    ):
        self._router = router
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.inline_max_chars = inline_max_chars
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Estimate]]] = asyncio.Queue()
        # One worker thread: the encoder is the bottleneck, and batching already uses its cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-batcher")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Prompts handed to the thread and not yet answered (queued, batching or estimating),
        # a caller that gave up included: its prompt is still in the thread's way.
        self._waiting = 0
        self.inline_estimates = 0  # how many prompts took each path, for tests and benchmarks
        self.thread_estimates = 0

    async def estimate(self, prompt: str) -> Estimate:
        """Estimate one prompt: inline when short and idle, else batched in the thread."""
        if self._closed:
            raise RuntimeError("EstimateBatcher is closed")
        if self._waiting == 0 and len(prompt) <= self.inline_max_chars:
            # Only when the thread has nothing: under load prompts keep batching there, and
            # a long prompt inline would stall every request the loop serves.
            self.inline_estimates += 1
            result = estimate_each(self._router, [prompt])[0]
            if isinstance(result, Exception):
                raise result
            return result
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self.thread_estimates += 1
        future: asyncio.Future[Estimate] = asyncio.get_running_loop().create_future()
        self._waiting += 1
        self._queue.put_nowait((prompt, future))
        return await future

    async def _next_batch(self) -> list[tuple[str, asyncio.Future[Estimate]]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            prompts = [prompt for prompt, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self._executor, estimate_each, self._router, prompts
                )
            # A failure outside the estimates goes to every waiting caller; the loop keeps serving.
            except Exception as exc:
                results = [exc] * len(batch)
            self._waiting -= len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    @property
    def closed(self) -> bool:
        """Whether aclose() has run: the worker thread is gone."""
        return self._closed

    async def aclose(self) -> None:
        """Stop the worker task and the thread; pending callers get CancelledError."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        self._executor.shutdown(wait=False)
