"""Ledger counters on Redis: each operation is one Lua script, so atomic across replicas.

Per counter: a hash `{prefix}c:{counter}` (sp/st/sr spent, rp/rt/rr reserved, built=1 once its
spend is known) and a sorted set `{prefix}z:{counter}` of holds scored by expiry; a member
carries its own amounts ("hold|pico|tokens|requests") so that an expired hold is subtracted
without any other key. Amounts travel as decimal strings and change only through HINCRBY, which
is exact in 64 bits; Lua's doubles are used only to compare (exact below 2**53 pico-dollars,
about $9,000, and off by at most a few pico-dollars above).

Per process: its heartbeat in the sorted set `{prefix}workers` (owner -> last seen, ms) and the
set `{prefix}o:{owner}` of counters it holds in, so that a sweep releases a dead process's holds
without scanning every counter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger.backend import (
    Admitted,
    Claim,
    CounterState,
    NeedsRebuild,
    Refused,
    owner_of,
)
from ledger.budgets import Amounts
from ledger.redis_direct import DirectCommands

# Connections per process; a call past them waits for one (see RedisCounters.connect).
_MAX_CONNECTIONS = 256
# The scripts' connection (ledger/redis_direct.py) is taken for dead when a command on it has
# had no reply for this long, without an operation deadline of its own.
_STALE_AFTER_S = 5.0
# A "stale before" no heartbeat reaches: the sweep script then releases the owner's holds.
_ALWAYS_STALE_MS = 2**62

T = TypeVar("T")

_PURGE = """
local function less(h, field, amount)
  -- Amounts are decimal strings (a Lua number would round picodollars past 2^53); '-0' is no
  -- integer to HINCRBY, and a cache hit's hold is 0 dollars and 0 tokens.
  if amount ~= '0' then
    redis.call('HINCRBY', h, field, '-' .. amount)
  end
end
local function release(h, z, m)
  local _, _, p, t, r = string.find(m, '^[^|]*|(-?%d+)|(-?%d+)|(-?%d+)$')
  if p and redis.call('HGET', h, 'built') == '1' then
    less(h, 'rp', p)
    less(h, 'rt', t)
    less(h, 'rr', r)
  end
  redis.call('ZREM', z, m)
end
local function purge(h, z, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now)) do
    release(h, z, m)
  end
end
local function state(h)
  return redis.call('HMGET', h, 'sp', 'st', 'sr', 'rp', 'rt', 'rr')
end
"""

# KEYS: workers, the owner's set of counters, then hash, zset per claim. ARGV: now, expiry,
# member, p, t, r, owner, the owner set's time to live, then per claim 5 values: limits p, t, r
# ("" when unlimited), the counter's time to live in seconds ("" for never), its name.
_RESERVE = (
    _PURGE
    + """
local n = (#KEYS - 2) / 2
local now = tonumber(ARGV[1])
local missing = {}
for i = 1, n do
  if redis.call('HGET', KEYS[2*i+1], 'built') ~= '1' then table.insert(missing, i - 1) end
end
if #missing > 0 then return {'rebuild', missing} end
local amount = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local states = {}
for i = 1, n do
  local h, z = KEYS[2*i+1], KEYS[2*i+2]
  purge(h, z, now)
  local s = state(h)
  for d = 1, 3 do
    local limit = ARGV[8 + 5*(i-1) + d]
    if limit ~= '' and amount[d] > 0 and
       tonumber(s[d] or '0') + tonumber(s[d+3] or '0') + amount[d] > tonumber(limit) then
      return {'refuse', i - 1, s}
    end
  end
end
-- A process that reserves is alive: a sweep that found it silent must not take this hold.
local seen = redis.call('ZSCORE', KEYS[1], ARGV[7])
if not seen or tonumber(seen) < now then redis.call('ZADD', KEYS[1], now, ARGV[7]) end
for i = 1, n do
  local h, z = KEYS[2*i+1], KEYS[2*i+2]
  local base = 8 + 5*(i-1)
  redis.call('HINCRBY', h, 'rp', ARGV[4])
  redis.call('HINCRBY', h, 'rt', ARGV[5])
  redis.call('HINCRBY', h, 'rr', ARGV[6])
  redis.call('ZADD', z, ARGV[2], ARGV[3])
  local at = ARGV[base + 4]
  if at ~= '' then
    redis.call('EXPIRE', h, at)
    redis.call('EXPIRE', z, at)
  end
  redis.call('SADD', KEYS[2], ARGV[base + 5])
  states[i] = state(h)
end
redis.call('EXPIRE', KEYS[2], ARGV[8])
return {'ok', states}
"""
)

# KEYS: hash, zset per claim. ARGV: member, actual p, t, r, reserved p, t, r, only_held (1/0).
_SETTLE = (
    _PURGE
    + """
local states = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  if redis.call('HGET', h, 'built') == '1' then
    local held = redis.call('ZREM', z, ARGV[1]) == 1
    if held then
      less(h, 'rp', ARGV[5])
      less(h, 'rt', ARGV[6])
      less(h, 'rr', ARGV[7])
    end
    if held or ARGV[8] ~= '1' then
      redis.call('HINCRBY', h, 'sp', ARGV[2])
      redis.call('HINCRBY', h, 'st', ARGV[3])
      redis.call('HINCRBY', h, 'sr', ARGV[4])
    end
  end
  states[i] = state(h)
end
return states
"""
)

# KEYS: hash, zset. ARGV: spent p, t, r; time to live in seconds or "".
_INITIALIZE = """
if redis.call('HGET', KEYS[1], 'built') == '1' then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'sp', ARGV[1], 'st', ARGV[2], 'sr', ARGV[3],
           'rp', '0', 'rt', '0', 'rr', '0', 'built', '1')
if ARGV[4] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""

# KEYS: hash, zset per claim. ARGV: now.
_READ = (
    _PURGE
    + """
local states = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  if redis.call('HGET', h, 'built') == '1' then
    purge(h, z, tonumber(ARGV[1]))
    states[i] = state(h)
  else
    states[i] = false
  end
end
return states
"""
)

# KEYS: workers, the owner's set of counters, then hash, zset per counter in that set.
# ARGV: owner, stale before (ms). Releases every hold of the owner unless it was seen since.
_SWEEP = (
    _PURGE
    + """
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) >= tonumber(ARGV[2]) then return -1 end
local prefix = ARGV[1] .. '.'
local released = 0
for i = 3, #KEYS, 2 do
  local h, z = KEYS[i], KEYS[i+1]
  for _, m in ipairs(redis.call('ZRANGE', z, 0, -1)) do
    if string.sub(m, 1, #prefix) == prefix then
      release(h, z, m)
      released = released + 1
    end
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return released
"""
)


class RedisCounters:
    """The scale-out ledger backend."""

    # A command takes its place on the event loop's one connection in the call's first step
    # (ledger/redis_direct.py), and Redis applies a connection's commands in that order.
    applies_in_order = True

    def __init__(self, redis: Redis, prefix: str, *, timeout_s: float | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        # Each counter operation's deadline (None: the client's own, if any); see connect.
        self._timeout_s = timeout_s
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._initialize = redis.register_script(_INITIALIZE)
        self._read = redis.register_script(_READ)
        self._sweep = redis.register_script(_SWEEP)
        self._workers = f"{prefix}workers"
        # The scripts go past the client's layers (ledger/redis_direct.py), with the client's
        # one retry of a connection error; the other commands (heartbeats, sweeps, SCAN) are
        # off the request path and stay on the client.
        self._direct = DirectCommands(
            redis.connection_pool, retries=1, stale_after_s=timeout_s or _STALE_AFTER_S
        )

    @classmethod
    def connect(
        cls, url: str, prefix: str, *, connect_timeout_s: float = 2.0, timeout_s: float = 5.0
    ) -> RedisCounters:
        # Bounded waits, and one immediate retry of a connection error only (a pooled
        # connection that died with a restarted Redis): redis-py's default retries ten times
        # with backoff, which held a request for seconds when Redis was down, and it would
        # retry a timed-out script that Redis may have run.
        # A blocking pool: past its connections a call waits for a free one (up to timeout_s)
        # instead of failing. redis-py's default pool raises MaxConnectionsError at 100, which
        # a burst reached and the ledger took for an outage (503s under load, not a Redis down).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            # No socket timeout: each operation has its deadline (timeout_s) from _bounded.
            # With one, redis-py wraps every send in asyncio.wait_for (a task and a loop turn
            # per call) and every read in a timeout of its own: two per script, four per
            # request (docs/benchmarks.md, "The ledger's Redis calls").
            socket_timeout=None,
            # RESP2 without CLIENT SETINFO, as the cache's client (gateway/redis_client.py): a
            # reconnect is a TCP connect and nothing more.
            protocol=2,
            driver_info=None,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # aclose() closes the pool it was given
        return cls(client, prefix, timeout_s=timeout_s)

    async def _bounded(self, call: Awaitable[T]) -> T:
        """`call` under the operation's deadline; past it, redis-py's own timeout error (an
        outage to the ledger, as a socket timeout was). The cut connection is dropped, never
        reused, and the script not retried: Redis may have run it."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except TimeoutError:
            raise RedisTimeoutError(f"no answer from Redis in {self._timeout_s:g} s") from None

    def _keys(self, claims: Sequence[Claim]) -> list[str]:
        return self._counter_keys([claim.counter for claim in claims])

    def _counter_keys(self, counters: Sequence[str]) -> list[str]:
        keys = []
        for counter in counters:
            keys += [f"{self.prefix}c:{counter}", f"{self.prefix}z:{counter}"]
        return keys

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}o:{owner}"

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild:
        owner = owner_of(hold_id)
        args: list[str | int] = [
            now_ms,
            expires_at_ms,
            _member(hold_id, amounts),
            amounts.picousd,
            amounts.tokens,
            amounts.requests,
            owner,
            # The owner's list of counters outlives its holds by a minute.
            _ttl(expires_at_ms + 60_000, now_ms),
        ]
        for claim in claims:
            args += [_opt(claim.limit_picousd), _opt(claim.limit_tokens)]
            args += [_opt(claim.limit_requests), _ttl(claim.expires_at_ms, now_ms), claim.counter]
        keys = [self._workers, self._owner_key(owner), *self._keys(claims)]
        reply = await self._bounded(self._direct.script(self._reserve, keys, args))
        verdict = _text(reply[0])
        if verdict == "rebuild":
            return NeedsRebuild(tuple(int(i) for i in reply[1]))
        if verdict == "refuse":
            index = int(reply[1])
            return Refused(index, _state(claims[index].counter, reply[2]))
        return Admitted(tuple(_state(c.counter, s) for c, s in zip(claims, reply[1], strict=True)))

    async def settle(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        actual: Amounts,
        reserved: Amounts,
        *,
        only_held: bool = False,
    ) -> tuple[CounterState, ...]:
        args: list[str | int] = [
            _member(hold_id, reserved),
            actual.picousd,
            actual.tokens,
            actual.requests,
        ]
        args += [reserved.picousd, reserved.tokens, reserved.requests, int(only_held)]
        reply = await self._bounded(self._direct.script(self._settle, self._keys(claims), args))
        return tuple(_state(c.counter, s) for c, s in zip(claims, reply, strict=True))

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        args: list[str | int] = [
            spent.picousd,
            spent.tokens,
            spent.requests,
            _ttl(claim.expires_at_ms, now_ms),
        ]
        await self._bounded(self._direct.script(self._initialize, self._keys([claim]), args))

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        reply = await self._bounded(self._direct.script(self._read, self._keys(claims), [now_ms]))
        return tuple(
            _state(c.counter, s) if s else None for c, s in zip(claims, reply, strict=True)
        )

    async def heartbeat(self, owner: str, now_ms: int) -> None:
        await self._bounded(self.redis.zadd(self._workers, {owner: now_ms}))

    async def sweep(self, stale_before_ms: int, limit: int) -> int:
        silent = await self._bounded(
            self.redis.zrangebyscore(
                self._workers, "-inf", f"({stale_before_ms}", start=0, num=limit
            )
        )
        released = 0
        for raw in silent:
            owner = _text(raw)
            members = await self._bounded(self.redis.smembers(self._owner_key(owner)))
            counters = sorted(_text(c) for c in members)
            keys = [self._workers, self._owner_key(owner), *self._counter_keys(counters)]
            swept = await self._bounded(self._sweep(keys=keys, args=[owner, stale_before_ms]))
            released += max(0, int(swept))
        return released

    async def retire(self, owner: str) -> int:
        # The sweep's script, for this owner alone and whenever it was last seen.
        members = await self._bounded(self.redis.smembers(self._owner_key(owner)))
        counters = sorted(_text(c) for c in members)
        keys = [self._workers, self._owner_key(owner), *self._counter_keys(counters)]
        return max(
            0, int(await self._bounded(self._sweep(keys=keys, args=[owner, _ALWAYS_STALE_MS])))
        )

    async def ping(self) -> None:
        await self._bounded(self.redis.ping())

    async def aclose(self) -> None:
        await self._direct.aclose()
        await self.redis.aclose()

    async def forget(self, counter_prefix: str) -> int:
        # SCAN's MATCH is a glob: a prefix's own *, ?, [, ] and \ must match only themselves.
        glob = str.maketrans({c: "\\" + c for c in "*?[]\\"})
        counters = 0
        for kind in ("c:", "z:"):  # the counters' hashes, then their holds
            pattern = f"{self.prefix}{kind}{counter_prefix}".translate(glob) + "*"
            keys: list[Any] = []
            cursor: int | None = None
            while cursor != 0:  # each SCAN call under the operation's deadline
                cursor, found = await self._bounded(
                    self.redis.scan(cursor or 0, match=pattern, count=1000)
                )
                keys += found
            for start in range(0, len(keys), 500):
                deleted = int(await self._bounded(self.redis.delete(*keys[start : start + 500])))
                counters += deleted if kind == "c:" else 0
        return counters


def _member(hold_id: str, amounts: Amounts) -> str:
    return f"{hold_id}|{amounts.picousd}|{amounts.tokens}|{amounts.requests}"


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _ttl(expires_at_ms: int | None, now_ms: int) -> str:
    # Relative to the ledger's clock, not Redis's: the two agree in production, and tests
    # may freeze the ledger's.
    return "" if expires_at_ms is None else str(max(1, -(-(expires_at_ms - now_ms) // 1000)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(counter: str, values: Sequence[Any]) -> CounterState:
    n = [int(v) if v is not None else 0 for v in values]
    return CounterState(counter, Amounts(n[0], n[1], n[2]), Amounts(n[3], n[4], n[5]))
