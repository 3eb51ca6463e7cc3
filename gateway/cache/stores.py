"""Where exact entries live: in process (LRU with a byte bound) or in Redis (shared by replicas)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_client import deadline_client
from ledger.redis_direct import DirectCommands

log = logging.getLogger("rightsize.cache")

_ADMIN_TIMEOUT_S = 10.0
# Connecting at start: long enough for a busy host (a full collection of a large heap alone
# has taken over a second), short enough not to hold up the start behind a Redis that accepts
# connections and never answers.
_START_TIMEOUT_S = 2.0
# One slow answer (a busy host, a GC pause) bypasses only that call; this many in a row mean
# Redis is slow for everyone, and it is skipped for retry_after_s like a Redis that is down.
# "In a row" counts calls one after the other: calls in flight together when one was cut (32
# requests held up by the same stall of a busy host) are one piece of evidence, not 32.
_SLOW_CALLS_TO_SKIP = 3
_SLOW_WARNING_EVERY_S = 60.0
# The lookups' and stores' connection is taken for dead when a command on it has had no reply
# for this long (each call is cut at its own deadline, ms, and its late reply dropped; a Redis
# that answers nothing for a second is hung or cut off, and a new connection is opened).
_STALE_AFTER_S = 1.0


class CacheUnavailable(Exception):
    """The store could not answer in time; the caller bypasses the cache."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CacheStore(Protocol):
    """Bytes by key, each owned by a team, with a TTL."""

    name: str

    async def get(self, team: str, key: str) -> bytes | None: ...

    async def set(self, team: str, key: str, value: bytes, ttl_s: float) -> None: ...

    async def delete(self, team: str, key: str) -> None: ...

    async def keys(self, team: str) -> list[str]: ...

    async def invalidate_team(self, team: str) -> int:
        """Delete every entry of the team; returns how many."""
        ...

    async def start(self) -> None:
        """Get ready for the first request (connect); never raises."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Slot:
    team: str
    value: bytes
    expires_at: float


class MemoryStore:
    """LRU bounded by the total size of the stored values; the embedded default."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._by_team: dict[str, set[str]] = {}
        self.bytes = 0

    async def get(self, team: str, key: str) -> bytes | None:
        slot = self._slots.get(key)
        if slot is None or slot.team != team:
            return None
        if slot.expires_at <= self._clock():
            self._remove(key)
            return None
        self._slots.move_to_end(key)
        return slot.value

    async def set(self, team: str, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes:
            return
        self._remove(key)
        now = self._clock()
        # Expired entries at the least recently used end go now, not when the byte bound is
        # reached: near copies of Redis entries live a second, and would otherwise fill it.
        while self._slots:
            oldest = next(iter(self._slots))
            if self._slots[oldest].expires_at > now:
                break
            self._remove(oldest)
        self._slots[key] = _Slot(team, value, now + ttl_s)
        self._by_team.setdefault(team, set()).add(key)
        self.bytes += len(value)
        while self.bytes > self._max_bytes:
            self._remove(next(iter(self._slots)))

    async def delete(self, team: str, key: str) -> None:
        slot = self._slots.get(key)
        if slot is not None and slot.team == team:
            self._remove(key)

    async def keys(self, team: str) -> list[str]:
        return sorted(self._by_team.get(team, ()))

    async def invalidate_team(self, team: str) -> int:
        keys = list(self._by_team.get(team, ()))
        for key in keys:
            self._remove(key)
        return len(keys)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        self._slots.clear()
        self._by_team.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    def _remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self.bytes -= len(slot.value)
        team_keys = self._by_team.get(slot.team)
        if team_keys is not None:
            team_keys.discard(key)
            if not team_keys:
                del self._by_team[slot.team]


class RedisStore:
    """Entries as Redis strings with a TTL under `{prefix}{team}:{key}`.

    Every call has a deadline of a few milliseconds; a call past it is bypassed. After an error
    (or several slow calls in a row) the store reports itself unavailable without trying for
    `retry_after_s`, so an outage costs nothing per request; the first call after that probes
    Redis again and caching resumes when it answers.

    With `near_ttl_s` > 0 an entry this process read or wrote is also kept in its memory for
    that long (never past its TTL in Redis; `near_max_bytes` bounds them, least recently used
    first out) and served from there: a delete or an invalidation made by another process
    reaches this one within `near_ttl_s`, one made here at once.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout_s: float,
        retry_after_s: float,
        *,
        near_ttl_s: float = 0.0,
        near_max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = deadline_client(url, timeout_s)
        # Lookups and stores go past the client's layers (ledger/redis_direct.py), without
        # retries; the admin calls (SCAN, bulk UNLINK) stay on the client.
        self._direct = DirectCommands(self._redis.connection_pool, stale_after_s=_STALE_AFTER_S)
        self._prefix = prefix
        self._timeout = timeout_s
        self._retry_after = retry_after_s
        self._down_until = 0.0
        self._down_since: float | None = None
        self._bypassed = 0
        self._slow_in_a_row = 0
        self._last_slow_at = -1.0  # when the last slow call was cut (time.monotonic)
        self._slow_warned_at = -_SLOW_WARNING_EVERY_S
        self._near_ttl = near_ttl_s
        self._near = MemoryStore(near_max_bytes, clock) if near_ttl_s > 0 else None
        # Counts the deletes and invalidations made here: a read or a write that was in flight
        # across one keeps no copy (what it read or wrote may be what was just deleted).
        self._forgets = 0

    async def start(self) -> None:
        """Open a connection before the first request needs one; never raises."""
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await self._direct.call("PING")
        except (TimeoutError, RedisError, OSError) as exc:
            # Not fatal: the first requests then bypass the cache and the usual retry applies.
            log.warning("prompt cache: Redis did not answer at start (%r)", exc)

    def _key(self, team: str, key: str) -> str:
        return f"{self._prefix}{team}:{key}"

    async def get(self, team: str, key: str) -> bytes | None:
        near = self._near
        if near is None:
            value = await self._call("get", lambda: self._direct.call("GET", self._key(team, key)))
            return bytes(value) if value is not None else None
        kept = await near.get(team, key)
        if kept is not None:
            return kept
        forgets, name = self._forgets, self._key(team, key)
        value, left_ms = await self._call(
            "get", lambda: self._direct.calls(("GET", name), ("PTTL", name))
        )
        if value is None:
            return None
        value = bytes(value)
        # PTTL: the milliseconds left; -1 (no TTL) never here, -2 expired since the GET.
        keep_s = self._near_ttl if left_ms == -1 else min(self._near_ttl, left_ms / 1000)
        if keep_s > 0 and forgets == self._forgets:
            await near.set(team, key, value, keep_s)
        return value

    async def set(self, team: str, key: str, value: bytes, ttl_s: float) -> None:
        px = max(1, int(ttl_s * 1000))
        forgets = self._forgets
        await self._call(
            "set", lambda: self._direct.call("SET", self._key(team, key), value, "PX", px)
        )
        if self._near is not None and forgets == self._forgets:
            await self._near.set(team, key, value, min(self._near_ttl, ttl_s))

    async def delete(self, team: str, key: str) -> None:
        if self._near is not None:
            self._forgets += 1
            await self._near.delete(team, key)
        await self._call("delete", lambda: self._direct.call("UNLINK", self._key(team, key)))

    async def keys(self, team: str) -> list[str]:
        async with asyncio.timeout(_ADMIN_TIMEOUT_S):
            start = len(self._key(team, ""))
            pattern = _glob_escape(self._key(team, "")) + "*"
            found = [k async for k in self._redis.scan_iter(match=pattern, count=1000)]
        return sorted(bytes(k).decode()[start:] for k in found)

    async def invalidate_team(self, team: str) -> int:
        if self._near is not None:
            self._forgets += 1
            await self._near.invalidate_team(team)
        keys = [self._key(team, k) for k in await self.keys(team)]
        deleted = 0
        async with asyncio.timeout(_ADMIN_TIMEOUT_S):
            for start in range(0, len(keys), 500):
                deleted += int(await self._redis.unlink(*keys[start : start + 500]))
        return deleted

    async def aclose(self) -> None:
        if self._near is not None:
            await self._near.aclose()
        await self._direct.aclose()
        await self._redis.aclose()

    async def _call(self, what: str, operation: Callable[[], Awaitable[Any]]) -> Any:
        started = time.monotonic()
        if started < self._down_until:
            self._bypassed += 1
            raise CacheUnavailable("unavailable")
        try:
            async with asyncio.timeout(None) as cut:
                deadline = _Deadline(cut, self._timeout)
                try:
                    result = await operation()
                finally:
                    deadline.cancel()
        except (TimeoutError, RedisTimeoutError):
            # RedisTimeoutError is a connect past socket_connect_timeout (there is no socket
            # timeout): 32 connections opened at once on a busy host, slow like a slow reply.
            self._slow(what, started)
            raise CacheUnavailable("timeout") from None
        except (RedisError, OSError) as exc:
            self._failed(what, repr(exc))
            raise CacheUnavailable("error") from None
        self._slow_in_a_row = 0
        if self._down_since is not None:
            log.warning(
                "prompt cache: Redis is back after %.1fs (%d calls bypassed); caching resumes",
                time.monotonic() - self._down_since,
                self._bypassed,
            )
            self._down_since, self._bypassed = None, 0
        return result

    def _slow(self, what: str, started: float) -> None:
        now = time.monotonic()
        if started > self._last_slow_at:
            # Sent after the last cut: news about Redis. Sent before it: the same slow spell.
            self._slow_in_a_row += 1
        self._last_slow_at = now
        deadline = f"{self._timeout * 1000:g} ms"
        if self._slow_in_a_row >= _SLOW_CALLS_TO_SKIP:
            self._failed(what, f"{self._slow_in_a_row} calls in a row over {deadline}")
            return
        if now - self._slow_warned_at >= _SLOW_WARNING_EVERY_S:
            self._slow_warned_at = now
            log.warning(
                "prompt cache: Redis %s took over %s; that request bypassed the cache "
                "(counted in cache stats; this warning repeats at most once a minute)",
                what,
                deadline,
            )

    def _failed(self, what: str, why: str) -> None:
        now = time.monotonic()
        self._down_until = now + self._retry_after
        self._bypassed += 1
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "prompt cache: Redis %s failed (%s); requests bypass the cache, retrying in %gs",
                what,
                why,
                self._retry_after,
            )
        else:
            log.debug("prompt cache: Redis %s still failing (%s)", what, why)


class _Deadline:
    """Cuts a Redis call after `seconds` of Redis's time, not of the event loop's own stalls.

    When the loop was blocked past the deadline (a GC pause, a spend-log flush, another
    request's CPU work), the reply may be sitting in the socket while the timer runs first;
    cutting then would blame Redis for the gateway's stall and bypass a good hit. A timer that
    fires late by half the deadline or more is taken for a stall: the call gets one fresh
    deadline from then, so a really slow Redis is still cut, at most one stall later.
    """

    def __init__(self, cut: asyncio.Timeout, seconds: float) -> None:
        self._cut = cut
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._forgiven = False
        due = self._loop.time() + seconds
        self._handle = self._loop.call_at(due, self._expire, due)

    def _expire(self, due: float) -> None:
        now = self._loop.time()
        if not self._forgiven and now - due >= self._seconds / 2:
            self._forgiven = True
            self._handle = self._loop.call_at(
                now + self._seconds, self._expire, now + self._seconds
            )
            return
        self._cut.reschedule(now)  # the Timeout cancels the call and raises TimeoutError

    def cancel(self) -> None:
        self._handle.cancel()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
