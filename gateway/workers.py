"""Serving in worker processes: their logging, their end with the supervisor, their connections,
the supervisor itself, and SIGHUP's hot reload passed on to every worker."""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from gateway.spend import WRITER_CONNECTIONS
from gateway.store.store import PoolLimits, Store
from gateway.tokens import prompt_tokens

log = logging.getLogger("rightsize.workers")

# `serve --workers N` puts its own pid here; the workers it spawns inherit the environment.
SUPERVISOR_ENV = "RIGHTSIZE_SUPERVISOR_PID"
# ... and how many workers it started (what POST /admin/reload reports it asked).
WORKERS_ENV = "RIGHTSIZE_SUPERVISOR_WORKERS"

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


def log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging configuration plus Rightsize's INFO lines, with timestamps and pids.

    uvicorn applies its configuration again in every worker it spawns; its default configures
    only the uvicorn loggers, which left a worker's `rightsize.*` INFO lines without a handler.
    `json` (server.log_format) makes every line, uvicorn's too, one JSON object.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["rightsize"] = {"format": LOG_FORMAT}
    if log_format == "json":
        for name in ("rightsize", "default", "access"):
            config["formatters"][name] = {"()": "gateway.request_log.JsonFormatter"}
    config["handlers"]["rightsize"] = {
        "class": "logging.StreamHandler",
        "formatter": "rightsize",
        "stream": "ext://sys.stderr",
    }
    # Other libraries' warnings reach the same handler; their INFO chatter does not.
    config["root"] = {"handlers": ["rightsize"], "level": "WARNING"}
    config["loggers"]["rightsize"] = {"level": "INFO"}
    config["loggers"]["alembic"] = {"level": "INFO"}  # which migrations ran at start
    return config


class Supervisor(Multiprocess):
    """uvicorn's supervisor of `serve --workers N`, with SIGHUP passed on to every worker,
    which hot-reloads (gateway/reload.py) where uvicorn would replace each worker by a new one."""

    def handle_hup(self) -> None:
        pids = [p.pid for p in self.processes if p.pid is not None and p.process.is_alive()]
        log.info("SIGHUP: asking %d worker(s) to reload: %s", len(pids), pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass  # died meanwhile: its replacement reads the file as it starts


@dataclass(frozen=True, slots=True)
class SupervisorLink:
    """A worker's way to its `serve --workers N` supervisor: POST /admin/reload in one worker
    asks the others to reload through it (SIGHUP to the supervisor, passed on to every worker)."""

    pid: int
    workers: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SupervisorLink | None:
        pid, workers = environ.get(SUPERVISOR_ENV), environ.get(WORKERS_ENV)
        if not pid or not workers:
            return None
        return cls(int(pid), int(workers))

    def ask_reload(self) -> int:
        """SIGHUP to the supervisor; how many other workers that asks. Only to the process that
        spawned this one: a worker whose supervisor is gone (adopted by init) asks nobody."""
        if os.getppid() != self.pid:
            return 0
        os.kill(self.pid, signal.SIGHUP)
        return self.workers - 1


class PendingReload:
    """SIGHUP while the process starts, before the app's own handler is in place: noted (not the
    default action, which ends the process) and taken up by a reload once the app serves."""

    def __init__(self) -> None:
        self.asked = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._note)

    def _note(self, sig: int, frame: FrameType | None) -> None:
        self.asked = True


def warm_up() -> None:
    """Load, before the process serves, what its first request would otherwise load on the
    event loop: the tokenizer's BPE ranks (0.1 s on an idle host, several times that on a busy
    one). The router's encoder already runs once at start-up (for the cache's vector width)."""
    prompt_tokens([{"role": "user", "content": "warm-up"}])


def follow_supervisor(supervisor_pid: int, poll_s: float = 1.0) -> None:
    """End this worker when the `serve` process that spawned it dies, so that no orphan keeps
    serving (and holding the port) after a SIGKILL of the supervisor.

    The worker gets SIGTERM, uvicorn's graceful shutdown: requests in flight finish and the
    spend log is flushed. On Linux the kernel sends it (PR_SET_PDEATHSIG); a thread watching
    the parent pid covers a supervisor that died before that was set, and other systems.
    """
    if supervisor_pid == os.getpid():
        return  # the factory called in the supervisor itself (not a spawned worker)
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no prctl symbol: the watcher alone
            log.warning("cannot ask the kernel to end this worker with its supervisor: %s", exc)
    watcher = threading.Thread(
        target=_watch_supervisor,
        args=(supervisor_pid, poll_s),
        name="rightsize-supervisor-watch",
        daemon=True,
    )
    watcher.start()


def _watch_supervisor(supervisor_pid: int, poll_s: float) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(poll_s)
    log.warning("the supervisor (pid %d) is gone: this worker stops", supervisor_pid)
    os.kill(os.getpid(), signal.SIGTERM)


async def check_connection_budget(store: Store, workers: int, pool: PoolLimits) -> str | None:
    """On PostgreSQL, warn when the workers of this replica could together open more
    connections than the server accepts from ordinary users; returns the warning."""
    if store.engine.dialect.name != "postgresql":
        return None
    try:
        async with store.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_setting('max_connections')::int,"
                        " current_setting('superuser_reserved_connections')::int,"
                        # PostgreSQL 16+ reserves more for pg_use_reserved_connections.
                        " coalesce(current_setting('reserved_connections', true), '0')::int"
                    )
                )
            ).one()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("cannot read PostgreSQL's max_connections to check the pool sizes: %s", exc)
        return None
    limit, superuser, reserved = int(row[0]), int(row[1]), int(row[2])
    available = limit - superuser - reserved
    per_worker = pool.most + WRITER_CONNECTIONS
    wanted = workers * per_worker
    if wanted <= available:
        log.info(
            "store: %d worker(s) x %d connections at most = %d of PostgreSQL's %d",
            workers,
            per_worker,
            wanted,
            available,
        )
        return None
    message = (
        f"store: {workers} worker(s) x {per_worker} connections at most (store.pool_size "
        f"{pool.size} + store.max_overflow {pool.overflow} + {WRITER_CONNECTIONS} for the "
        f"spend writer) = {wanted}, more than the "
        f"{available} PostgreSQL accepts (max_connections {limit} - {superuser + reserved} "
        "reserved): under load requests will fail. Lower store.pool_size, store.max_overflow "
        "or the workers, or raise max_connections (other replicas and tools count too)"
    )
    log.warning(message)
    return message
