"""Spend-log writer: batches records off the request path and never drops one silently."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import orjson

from gateway.store import SpendRecord, Store

log = logging.getLogger("rightsize.spend")

_RETRY_DELAYS_S = (0.1, 0.5, 2.0)


class SpendWriter:
    """Queues records and inserts them in batches; on shutdown flushes what is left."""

    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float,
        batch_size: int,
        fallback_file: Path,
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._fallback = fallback_file
        self._queue: asyncio.Queue[SpendRecord | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spend-writer")

    def record(self, record: SpendRecord) -> None:
        self._queue.put_nowait(record)

    async def aclose(self) -> None:
        """Write every queued record, then stop."""
        if self._task is None:
            await self._flush(self._drain()[0], final=True)
            return
        self._queue.put_nowait(None)
        await self._task

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is not None:
                await asyncio.sleep(self._interval)
            batch, stopping = self._drain()
            if first is None:
                stopping = True
            else:
                batch.insert(0, first)
            await self._flush(batch, final=stopping)

    def _drain(self) -> tuple[list[SpendRecord], bool]:
        batch, stop = [], False
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                stop = True
            else:
                batch.append(item)
        return batch, stop

    async def _flush(self, records: list[SpendRecord], *, final: bool) -> None:
        for start in range(0, len(records), self._batch_size):
            await self._write(records[start : start + self._batch_size], final=final)

    async def _write(self, batch: list[SpendRecord], *, final: bool) -> None:
        for delay in (*_RETRY_DELAYS_S, None):
            try:
                await self._store.insert_spend(batch)
                return
            except Exception:
                if delay is None:
                    break
                log.exception("spend log write failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
        # The store is unreachable: keep the records on local disk rather than lose them.
        self._fallback.parent.mkdir(parents=True, exist_ok=True)
        with self._fallback.open("ab") as handle:
            for record in batch:
                handle.write(orjson.dumps(dataclasses.asdict(record), default=str) + b"\n")
        log.error(
            "spend log unreachable: wrote %d records to %s%s",
            len(batch),
            self._fallback,
            " at shutdown" if final else "",
        )
