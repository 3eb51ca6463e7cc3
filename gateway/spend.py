"""Spend-log writer: batches records off the request path (and off the serving event loop,
in a thread of its own) and never drops one silently.

Every record is fitted to the schema and appended to this process's write-ahead journal before
it is queued; a batch the store refuses is retried, then written row by row; a row the store
refuses alone goes to the fallback file. Dead processes' journals and the fallback file are
replayed at start and periodically. Rows carry a unique record_id, so a replay is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from gateway.loop_thread import LoopThread
from gateway.settings import ConfigError, data_dir
from gateway.store import SpendRecord, Store, sqlite_path
from gateway.store.records import fit_spend_record

log = logging.getLogger("rightsize.spend")

_RETRY_DELAYS_S = (0.1, 0.5, 2.0)
_FIELDS = {f.name: f for f in dataclasses.fields(SpendRecord)}


class SpendObserver(Protocol):
    """Told the rows replayed, kept unwritten and still failing, on the writer's own thread
    (gateway.metrics.Metrics)."""

    def rows_replayed(self, count: int) -> None: ...

    def rows_unwritten(self, count: int) -> None: ...

    def rows_still_failing(self, count: int) -> None: ...


# The writer's own engine holds this many connections per process (one batch at a time).
WRITER_CONNECTIONS = 1


class SpendWriter:
    """Journals and queues records on the serving loop; writes them in batches on its own.

    All database work (inserts, retries, replays) runs on a private event loop in a thread of
    its own, with its own engine: on the serving loop SQLAlchemy and the driver took 6.4 ms at
    p50 and 31 ms at p99 per flush at 100 requests/s (issue 19), a stall of every request in
    flight. The serving loop only fits, journals and appends a record under a lock, and wakes
    the writer once per batch.

    `replayed` counts rows this process wrote from the fallback file or dead journals,
    `unwritten` the rows it put in the fallback file, and `still_failing` the rows the last
    replay of the fallback file could not write (they stay in it).
    """

    def __init__(
        self,
        connect: Callable[[], Store],
        *,
        flush_interval_s: float,
        batch_size: int,
        fallback_file: Path,
        journal_dir: Path | None = None,
        replay_interval_s: float = 30.0,
        observer: SpendObserver | None = None,
    ) -> None:
        self._connect = connect
        self._observer = observer
        self._store: Store | None = None  # opened, used and closed on the writer's loop only
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._fallback = fallback_file
        self._replay_interval = replay_interval_s
        self._journal = _Journal(journal_dir) if journal_dir is not None else None
        self._thread = LoopThread("spend-writer")
        # Guards the journal and the pending list together: a batch taken with its journal
        # segment holds exactly the records journaled in that segment.
        self._lock = threading.Lock()
        self._pending: list[SpendRecord] = []
        self._wake: asyncio.Event | None = None  # the writer loop's; set once per batch
        self._flushing: asyncio.Lock | None = None  # the writer loop's (_flush)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._owner = self._journal.owner if self._journal is not None else uuid.uuid4().hex
        self._replays = 0
        self.replayed = 0
        self.unwritten = 0
        self.still_failing = 0

    async def start(self) -> None:
        """Replay what dead processes and earlier failures left, then start writing."""
        await self._thread.run(self._start())

    def record(self, record: SpendRecord) -> None:
        """Fit the record to the schema (in place: the caller then charges what is logged),
        journal it and queue a copy. Call it before anything that could still fail."""
        changed = fit_spend_record(record)
        if changed:
            log.warning(
                "spend row of request %s fitted to the schema: %s",
                record.request_id,
                ", ".join(changed),
            )
        line = None
        if self._journal is not None:
            try:
                line = encode(record)
            except (TypeError, ValueError) as exc:
                # Never the request's failure: the row is still queued for the store.
                log.error("spend row of request %s not journaled: %s", record.request_id, exc)
        with self._lock:
            if line is not None and self._journal is not None:
                self._journal.append(line)
            self._pending.append(dataclasses.replace(record))
            first = len(self._pending) == 1
        wake = self._wake
        if first and wake is not None:
            # One cross-thread wake-up per batch: the records after it wait for the flush.
            self._thread.call_soon(wake.set)

    async def aclose(self) -> None:
        """Write every queued record, then stop."""
        try:
            await self._thread.run(self._close())
        finally:
            await self._thread.stop()
            if self._journal is not None:
                with self._lock:
                    self._journal.close()

    async def flush(self) -> None:
        """Write the records queued so far now, without waiting for the batch interval (the
        ledger asks for it before it rebuilds a counter from the spend log)."""
        await self._thread.run(self._flush(final=False))

    async def replay(self) -> None:
        """Write the journals of dead processes and the fallback file into the store."""
        await self._thread.run(self._replay())

    # On the writer's loop from here on.

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        with self._lock:
            if self._pending:  # recorded before there was a writer to wake
                self._wake.set()
        try:
            await self._replay()
        except Exception:
            # Serving is worth more than a replay that failed here: the periodic one retries.
            log.exception("spend replay at start failed")
        self._task = asyncio.create_task(self._run(), name="spend-writer")
        self._replayer = asyncio.create_task(self._replay_periodically(), name="spend-replay")

    async def _close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self._task is not None and self._wake is not None:
            self._stop.set()
            self._wake.set()
            await self._task
        self._wake = None
        # Records queued after the writer stopped (or when it never started).
        await self._flush(final=True)
        if self._store is not None:
            await self._store.aclose()
            self._store = None

    def _opened(self) -> Store:
        if self._store is None:
            self._store = self._connect()
        return self._store

    async def _replay(self) -> None:
        if self._journal is not None:
            for owner, segments in self._journal.dead_owners():
                with owner:
                    for segment in segments:
                        records = _read_records(segment)
                        written, _ = await self._write_all(records, final=False)
                        self._count_replayed(written)
                        if records:
                            log.warning(
                                "spend journal %s of a dead process: %d of %d rows written",
                                segment.name,
                                written,
                                len(records),
                            )
                        segment.unlink(missing_ok=True)
        await self._replay_fallback()

    async def _replay_fallback(self) -> None:
        name = self._fallback.name
        # Renamed aside first (a fresh name each time): rows the store refuses from now on go
        # to a new file instead of one being read and deleted under them.
        with contextlib.suppress(FileNotFoundError):
            os.rename(self._fallback, self._aside())
        pending = []
        for path in sorted(self._fallback.parent.glob(f"{name}.*.replaying")):
            owner = path.name[len(name) + 1 :].split(".", 1)[0]
            if owner == self._owner:
                pending.append(path)
            elif self._journal is not None and self._journal.is_dead(owner):
                # Its process died mid-replay; renamed to claim it, so one process replays it.
                claimed = self._aside()
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, claimed)
                    pending.append(claimed)
        if not pending:
            self._set_still_failing(0)
            return
        failing = 0
        for path in pending:
            records = _read_locked(path)
            written, failed = await self._write_all(records, final=False)
            self._count_replayed(written)
            failing += failed
            path.unlink(missing_ok=True)
            log.warning(
                "spend fallback file replayed: %d of %d rows written, %d still failing (%s)",
                written,
                len(records),
                failed,
                self._fallback,
            )
        self._set_still_failing(failing)

    def _count_replayed(self, count: int) -> None:
        self.replayed += count
        if self._observer is not None and count:
            self._observer.rows_replayed(count)

    def _set_still_failing(self, count: int) -> None:
        self.still_failing = count
        if self._observer is not None:
            self._observer.rows_still_failing(count)

    def _aside(self) -> Path:
        self._replays += 1
        return self._fallback.with_name(
            f"{self._fallback.name}.{self._owner}.{self._replays}.replaying"
        )

    async def _replay_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval)
            try:
                await self._replay()
            except Exception:
                log.exception("spend replay failed; trying again in %.0fs", self._replay_interval)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            # One batch per interval: the records of the next interval_s join this one;
            # aclose() cuts the wait short.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()
            await self._flush(final=self._stop.is_set())

    async def _flush(self, *, final: bool) -> None:
        # One flush at a time: an asked-for flush (before a counter rebuild) that found the
        # queue empty while the interval's batch was still being inserted returned before that
        # batch was in the log, and the rebuild counted the log short by it.
        if self._flushing is None:
            self._flushing = asyncio.Lock()  # on the writer's loop, where every flush runs
        async with self._flushing:
            await self._flush_pending(final=final)

    async def _flush_pending(self, *, final: bool) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            segment = self._journal.rotate() if self._journal is not None else None
        try:
            await self._write_all(batch, final=final)
        except Exception:
            # Neither the store nor the fallback file took them (a full disk): the journal
            # segment is kept, and replayed once this process has ended.
            log.exception("spend batch of %d rows kept only in the journal", len(batch))
            return
        if segment is not None and self._journal is not None:
            self._journal.release(segment)

    async def _write_all(self, records: list[SpendRecord], *, final: bool) -> tuple[int, int]:
        """Write in batches; (rows written, rows put in the fallback file)."""
        written = failed = 0
        for start in range(0, len(records), self._batch_size):
            batch = records[start : start + self._batch_size]
            refused = await self._write(batch, final=final)
            written += len(batch) - refused
            failed += refused
        return written, failed

    async def _write(self, batch: list[SpendRecord], *, final: bool) -> int:
        """Write one batch; the number of rows that went to the fallback file instead."""
        error: Exception | None = None
        for delay in (*_RETRY_DELAYS_S, None):
            try:
                await self._opened().insert_spend(batch)
                return 0
            except Exception as exc:
                error = exc
                if delay is None or not store_unreachable(exc):
                    break  # a row's fault does not go away by waiting
                log.warning("spend log write failed (%s); retrying in %.1fs", _reason(exc), delay)
                await asyncio.sleep(delay)
        assert error is not None
        refused = await self._write_rows(batch, error)
        if refused:
            self._keep(refused, final=final)
        return len(refused)

    async def _write_rows(
        self, batch: list[SpendRecord], error: Exception
    ) -> list[tuple[SpendRecord, str]]:
        """Write row by row so that one row the store refuses fails only itself."""
        if not store_unreachable(error):
            log.warning(
                "spend batch of %d rows refused (%s); writing row by row",
                len(batch),
                _reason(error),
            )
        refused: list[tuple[SpendRecord, str]] = []
        for index, record in enumerate(batch):
            if store_unreachable(error):
                # The store is down, not the row at fault: keep the rest without trying each.
                refused += [(r, _reason(error)) for r in batch[index:]]
                break
            try:
                await self._opened().insert_spend([record])
            except Exception as exc:
                error = exc
                refused.append((record, _reason(exc)))
        return refused

    def _keep(self, refused: list[tuple[SpendRecord, str]], *, final: bool) -> None:
        """Append the refused rows to the fallback file, for a later replay (blocking: this
        is the writer's own thread)."""
        for record, reason in refused[:10]:
            log.error(
                "spend row %s of request %s refused by the store (%s): kept in %s",
                record.record_id,
                record.request_id,
                reason,
                self._fallback,
            )
        data = b"".join(encode(record) for record, _ in refused)
        _append_locked(self._fallback, data)
        self.unwritten += len(refused)
        if self._observer is not None:
            self._observer.rows_unwritten(len(refused))
        log.error(
            "spend log: %d rows written to %s%s",
            len(refused),
            self._fallback,
            " at shutdown" if final else "",
        )


def default_fallback_file(store_url: str) -> Path:
    """Beside the SQLite file; for a server store in the user's data directory, named for the
    store, so that gateways of two stores sharing a directory never replay each other's rows."""
    path = sqlite_path(store_url)
    if path is not None:
        return path.parent / "spend-log-unwritten.jsonl"
    return data_dir() / f"spend-log-unwritten-{_fingerprint(store_url)}.jsonl"


def default_journal_dir(fallback_file: Path, store_url: str) -> Path:
    """spend-journal/ beside the fallback file, one directory per store (see above)."""
    return fallback_file.parent / "spend-journal" / _fingerprint(store_url)


def _fingerprint(store_url: str) -> str:
    # Without the password: rotating it must not orphan the journals.
    url = make_url(store_url).render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def store_unreachable(exc: BaseException) -> bool:
    """True when the store itself failed (connection, lock, resources), not the row."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, sa_exc.DisconnectionError, sa_exc.TimeoutError)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlite3.Error) and _sqlite_unavailable(current):
            return True
        # asyncpg: connection exception, insufficient resources, operator intervention,
        # system error, transaction rollback (deadlock, serialization): none is the row's fault.
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state[:2] in {"08", "40", "53", "57", "58"}:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _sqlite_unavailable(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return isinstance(error, sqlite3.OperationalError)
    # BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL
    return code & 0xFF in {5, 6, 7, 8, 10, 11, 13, 14, 15}


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def encode(record: SpendRecord) -> bytes:
    """One journal or fallback-file line."""
    return orjson.dumps({name: getattr(record, name) for name in _FIELDS}, default=str) + b"\n"


def decode(line: bytes) -> SpendRecord:
    """A record from one line; lines written before record ids existed get one from their
    content, so replaying them twice still writes them once."""
    data: dict[str, Any] = {k: v for k, v in orjson.loads(line).items() if k in _FIELDS}
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    for money in ("cost_usd", "saved_usd"):
        if money in data:
            data[money] = Decimal(str(data[money]))
    if not data.get("record_id"):
        data["record_id"] = hashlib.blake2b(line.strip(), digest_size=16).hexdigest()
    record = SpendRecord(**data)
    fit_spend_record(record)
    return record


def _read_records(path: Path) -> list[SpendRecord]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return list(_decode_lines(path, data.splitlines()))


def _decode_lines(path: Path, lines: Iterable[bytes]) -> Iterable[SpendRecord]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield decode(line)
        except Exception as exc:
            # A line cut short by a crash mid-write, or edited by hand: nothing to recover.
            log.error("%s:%d: unreadable spend row skipped (%s)", path, number, exc)


def _read_locked(path: Path) -> list[SpendRecord]:
    """Read a file renamed aside once its last writer (holding the lock) is done with it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    return list(_decode_lines(path, data.splitlines()))


def _append_locked(path: Path, data: bytes) -> None:
    """Append under an flock, to the file that is at `path` now (a replay may rename it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                _write_all(fd, data)
                return
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Journal:
    """This process's write-ahead journal: `{owner}.lock`, held under an flock while the
    process lives, and segments `{owner}.{n}.jsonl`, one per batch, deleted once written.

    A record is appended with one write(2) and no fsync: the page cache survives a killed
    process (not a power cut or a kernel crash).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            self._lock = self._create_lock()
        except OSError as exc:
            # Serving without the journal would lose a killed worker's rows: refuse to start.
            raise ConfigError(
                f"spend_log.journal_dir: cannot write the spend journal in {directory}: "
                f"{exc.strerror or exc}; set spend_log.journal_dir to a writable directory"
            ) from exc
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._sequence = 0
        self._fd: int | None = None
        self._segment: Path | None = None

    def _create_lock(self) -> int:
        path = self.directory / f"{self.owner}.lock"
        for _ in range(3):
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                continue  # another process removed the directory, empty, just now (close)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def append(self, line: bytes) -> None:
        try:
            if self._fd is None:
                self._segment = self.directory / f"{self.owner}.{self._sequence:09d}.jsonl"
                self._fd = os.open(self._segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _write_all(self._fd, line)
        except OSError as exc:
            # A full disk must not fail the request: the row is still queued for the store.
            log.error("spend journal write failed (%s): this row survives no crash", exc)

    def rotate(self) -> Path | None:
        """Close the current segment (it holds what was queued since the last rotation)."""
        if self._fd is None:
            return None
        os.close(self._fd)
        segment, self._fd, self._segment = self._segment, None, None
        self._sequence += 1
        return segment

    def release(self, segment: Path) -> None:
        """The segment's records are in the store or the fallback file."""
        segment.unlink(missing_ok=True)

    def close(self) -> None:
        # A segment still here holds rows recorded after the last flush: left for the next
        # process to replay (with the lock file gone, its owner counts as dead).
        self.rotate()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{self.owner}.lock").unlink()
        os.close(self._lock)
        # Left only when empty: a live process's lock file is always in it.
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def dead_owners(self) -> Iterator[tuple[_OwnerLock, list[Path]]]:
        """Owners whose lock is free (their process died), each locked in turn, with segments."""
        owners = {p.name.split(".", 1)[0] for p in self.directory.glob("*.jsonl")}
        owners |= {p.stem for p in self.directory.glob("*.lock")}
        owners.discard(self.owner)
        for owner in sorted(owners):
            lock = _OwnerLock.take(self.directory / f"{owner}.lock")
            if lock is not None:
                yield lock, sorted(self.directory.glob(f"{owner}.*.jsonl"))

    def is_dead(self, owner: str) -> bool:
        """Whether the process that owned this journal has died."""
        lock = _OwnerLock.take(self.directory / f"{owner}.lock", keep=False)
        return lock is not None


class _OwnerLock:
    """A dead owner's lock, held while its segments are replayed, then deleted with them."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, path: Path, *, keep: bool = True) -> _OwnerLock | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return cls(path, None)  # no lock file: its owner is long gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # alive
            raise
        if not keep:
            os.close(fd)
            return cls(path, None)
        return cls(path, fd)

    def __enter__(self) -> _OwnerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
