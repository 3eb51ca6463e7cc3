"""Telling an outage of a dependency (the store, Redis) from a bug.

A connection refused, reset or timed out, a server shutting down or out of connections: the
operation may succeed later, so the ledger answers with its outage policy (`on_outage`) and the
gateway with 503. Anything else (a bad query, a broken invariant) is a bug and stays one.
"""

from __future__ import annotations

import errno
import socket
import sqlite3
import traceback

import asyncpg
import redis.exceptions
import sqlalchemy.exc

# SQLSTATE classes of a server that cannot serve now: 08 connection exception, 53 insufficient
# resources (too many connections, disk full), 57 operator intervention (shutdown, starting up).
_ASYNCPG_OUTAGES: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
)
_REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # Redis loading its data set after a restart, or a replica being promoted.
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)
# sqlite3.OperationalError also reports bad SQL ("no such table"); only these are the file's.
_SQLITE_OUTAGES = (
    "database is locked",
    "unable to open database",
    "disk i/o error",
    "database or disk is full",
    "readonly database",
)
_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ETIMEDOUT}
)
_DEPTH = 8  # how far down __cause__ / __context__ an outage may hide


def is_outage(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says a dependency could not be reached or served."""
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(_DEPTH):
        if current is None or id(current) in seen:
            return False
        seen.add(id(current))
        if _is_outage_itself(current):
            return True
        wrapped = getattr(current, "orig", None)
        if isinstance(wrapped, BaseException) and _is_outage_itself(wrapped):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_outage_itself(exc: BaseException) -> bool:
    if isinstance(exc, _REDIS_OUTAGES + _ASYNCPG_OUTAGES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(marker in text for marker in _SQLITE_OUTAGES)
    # ConnectionRefusedError, ConnectionResetError, BrokenPipeError and TimeoutError (which
    # asyncio.TimeoutError is since Python 3.11); not every OSError (a missing file is a bug).
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def dependency_of(exc: BaseException) -> str:
    """Which dependency an outage is of, for messages: "Redis" or "the database".

    By the exception's type where it has one of its own, else by the code it was raised in: a
    refused connection is a bare ConnectionRefusedError from asyncpg's or redis-py's connect.
    """
    current: BaseException | None = exc
    for _ in range(_DEPTH):
        if current is None:
            break
        if isinstance(current, redis.exceptions.RedisError):
            return "Redis"
        if isinstance(current, sqlalchemy.exc.SQLAlchemyError | asyncpg.PostgresError):
            return "the database"
        for frame, _line in reversed(list(traceback.walk_tb(current.__traceback__))):
            module = str(frame.f_globals.get("__name__", ""))
            if module.startswith("redis"):
                return "Redis"
            if module.startswith(("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3")):
                return "the database"
        current = current.__cause__ or current.__context__
    return "a dependency"


def brief(exc: BaseException) -> str:
    """What a client is told of the failure: its class only. Its text (hosts, ports, SQL) is
    for the log."""
    return type(exc).__name__
