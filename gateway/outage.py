"""Telling an outage of a dependency (the store, Redis) from a bug, and answering it with a 503.

A connection refused, reset or timed out, a server shutting down or out of connections: the
request may succeed later, so the client gets 503 with `retry-after`. Anything else (a bad
query, a broken invariant) stays a 500 with its traceback in the log.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import redis.exceptions
import sqlalchemy.exc

from gateway.errors import RETRY_AFTER_S, GatewayError, ServiceUnavailable, StoreUnavailable

# Which failures are outages is the domain's (the ledger's fail-open policy reads it too).
from ledger.outage import brief, dependency_of
from ledger.outage import is_outage as is_outage

log = logging.getLogger("rightsize")

# What an outage can surface as where no code of ours catches it (the admin API, /v1/models):
# the app answers these through unavailable(), letting anything that is not an outage be a 500.
EXCEPTION_CLASSES: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    redis.exceptions.RedisError,
    asyncpg.PostgresError,
    asyncpg.exceptions.InterfaceError,
    sqlite3.Error,
    OSError,
)


def unavailable(
    exc: BaseException, retry_after_s: int = RETRY_AFTER_S
) -> ServiceUnavailable | None:
    """The 503 to answer for an outage, naming its dependency; None for anything else."""
    if not is_outage(exc):
        return None
    where = dependency_of(exc)
    message = f"The gateway cannot reach {where} ({brief(exc)}); retry in a moment"
    if where == "the database":
        return StoreUnavailable(message, retry_after_s=retry_after_s)
    return ServiceUnavailable(message, retry_after_s=retry_after_s)


@contextmanager
def store_outage_as_503(retry_after_s: int = RETRY_AFTER_S) -> Iterator[None]:
    """Turn an outage of the store inside the block into StoreUnavailable."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("the store cannot be reached: %r", exc)
        raise StoreUnavailable(
            f"The gateway cannot reach its database ({brief(exc)}); retry in a moment",
            retry_after_s=retry_after_s,
        ) from exc
