"""An event loop in a thread of its own, for work that must not stall the serving loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on a private event loop in a daemon thread, started on first use.

    Objects bound to a loop (an async engine's connections) must be created and used inside
    `run`; the serving loop only awaits the results.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the thread's loop and wait for its result without blocking this one."""
        future = asyncio.run_coroutine_threadsafe(coro, self._started())
        return await asyncio.wrap_future(future)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Schedule `callback` on the thread's loop from any thread; a no-op once it stopped."""
        loop = self._loop
        if loop is None:
            return
        # The loop may close between the check and the call (stop() on another thread).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    async def stop(self) -> None:
        """Stop the loop (after what `run` started has returned) and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)

    def _started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            # Daemon: a process that exits without stop() (a crash) is not held up by it.
            thread = threading.Thread(target=_serve, args=(loop,), name=self._name, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))  # let the cancelled tasks unwind
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
