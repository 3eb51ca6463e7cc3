"""One read in flight per key: the callers that ask for the same key meanwhile wait on it.

For caches that lapse under load (the ledger's budgets, the gateway's authenticated keys):
without it each of the requests in flight when an entry lapsed made the same store read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Reads in flight by key, each shared by every caller of its key until it ends."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """`read()`'s result (or exception), started only when no read of `key` is in flight."""
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(read())
            self._pending[key] = pending
            pending.add_done_callback(functools.partial(self._ended, key))
        # Shielded: a caller that gives up does not cancel the read the others wait on.
        return await asyncio.shield(pending)

    def _ended(self, key: K, read: asyncio.Future[V]) -> None:
        del self._pending[key]
        if not read.cancelled():
            read.exception()  # retrieved: every caller may have given up meanwhile
