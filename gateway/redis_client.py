"""The Redis client of the request path's best-effort users (the prompt cache, stickiness)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Connections per client and process. Past them a call waits for a free one (under the
# caller's own deadline) instead of failing: redis-py's default pool raises MaxConnectionsError
# at 100, which under a burst turned load into what looked like an outage (cache bypasses).
MAX_CONNECTIONS = 256


def deadline_client(url: str, timeout_s: float) -> Redis:
    """A client whose calls the caller bounds itself (asyncio.timeout), with no retries."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=None,  # waiting for a pooled connection ends with the caller's deadline
        socket_connect_timeout=max(timeout_s, 0.05),
        # No socket timeout: the deadline is the caller's own. With one, redis-py wraps every
        # send in asyncio.wait_for, which costs a task and a loop turn per call.
        socket_timeout=None,
        # RESP2 without CLIENT SETINFO: a new connection is a TCP connect and nothing more.
        # A reconnect follows every call cut at its deadline (a cancelled read drops the
        # connection), on the request path; with the default handshake (HELLO, then two
        # CLIENT SETINFO, which Redis 7.0 rejects) it took 0.65 to 0.9 ms at p50, now 0.22 to
        # 0.3 ms (benchmarks/cache_redis_calls.py).
        protocol=2,
        driver_info=None,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool it was given
    return client
