"""Ledger counters on Redis: each operation is one Lua script, so atomic across replicas.

Per counter: a hash `{prefix}c:{counter}` (sp/st/sr spent, rp/rt/rr reserved, built=1 once its
spend is known) and a sorted set `{prefix}z:{counter}` of holds scored by expiry; a member
carries its own amounts ("hold|pico|tokens|requests") so that an expired hold is subtracted
without any other key. Amounts travel as decimal strings and change only through HINCRBY, which
is exact in 64 bits; Lua's doubles are used only to compare (exact below 2**53 pico-dollars,
about $9,000, and off by at most a few pico-dollars above).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from gateway.ledger.backend import Admitted, Claim, CounterState, NeedsRebuild, Refused
from gateway.ledger.budgets import Amounts

_PURGE = """
local function purge(h, z, now)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, m in ipairs(expired) do
    local _, _, p, t, r = string.find(m, '^[^|]*|(-?%d+)|(-?%d+)|(-?%d+)$')
    if p and redis.call('HGET', h, 'built') == '1' then
      redis.call('HINCRBY', h, 'rp', '-' .. p)
      redis.call('HINCRBY', h, 'rt', '-' .. t)
      redis.call('HINCRBY', h, 'rr', '-' .. r)
    end
    redis.call('ZREM', z, m)
  end
end
local function state(h)
  return redis.call('HMGET', h, 'sp', 'st', 'sr', 'rp', 'rt', 'rr')
end
"""

# KEYS: hash, zset per claim. ARGV: now, expiry, member, p, t, r, then per claim: 4 values
# (limits p, t, r, "" when unlimited; the counter's time to live in seconds, "" for never).
_RESERVE = (
    _PURGE
    + """
local n = #KEYS / 2
local now = tonumber(ARGV[1])
local missing = {}
for i = 1, n do
  if redis.call('HGET', KEYS[2*i-1], 'built') ~= '1' then table.insert(missing, i - 1) end
end
if #missing > 0 then return {'rebuild', missing} end
local amount = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local states = {}
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  purge(h, z, now)
  local s = state(h)
  for d = 1, 3 do
    local limit = ARGV[6 + 4*(i-1) + d]
    if limit ~= '' and amount[d] > 0 and
       tonumber(s[d] or '0') + tonumber(s[d+3] or '0') + amount[d] > tonumber(limit) then
      return {'refuse', i - 1, s}
    end
  end
end
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('HINCRBY', h, 'rp', ARGV[4])
  redis.call('HINCRBY', h, 'rt', ARGV[5])
  redis.call('HINCRBY', h, 'rr', ARGV[6])
  redis.call('ZADD', z, ARGV[2], ARGV[3])
  local at = ARGV[6 + 4*i]
  if at ~= '' then
    redis.call('EXPIRE', h, at)
    redis.call('EXPIRE', z, at)
  end
  states[i] = state(h)
end
return {'ok', states}
"""
)

# KEYS: hash, zset per claim. ARGV: member, actual p, t, r, reserved p, t, r.
_SETTLE = (
    _PURGE
    + """
local states = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  if redis.call('HGET', h, 'built') == '1' then
    if redis.call('ZREM', z, ARGV[1]) == 1 then
      redis.call('HINCRBY', h, 'rp', '-' .. ARGV[5])
      redis.call('HINCRBY', h, 'rt', '-' .. ARGV[6])
      redis.call('HINCRBY', h, 'rr', '-' .. ARGV[7])
    end
    redis.call('HINCRBY', h, 'sp', ARGV[2])
    redis.call('HINCRBY', h, 'st', ARGV[3])
    redis.call('HINCRBY', h, 'sr', ARGV[4])
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


class RedisCounters:
    """The scale-out ledger backend."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._initialize = redis.register_script(_INITIALIZE)
        self._read = redis.register_script(_READ)

    @classmethod
    def connect(cls, url: str, prefix: str) -> RedisCounters:
        return cls(Redis.from_url(url), prefix)

    def _keys(self, claims: Sequence[Claim]) -> list[str]:
        keys = []
        for claim in claims:
            keys += [f"{self.prefix}c:{claim.counter}", f"{self.prefix}z:{claim.counter}"]
        return keys

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild:
        args: list[str | int] = [
            now_ms,
            expires_at_ms,
            _member(hold_id, amounts),
            amounts.picousd,
            amounts.tokens,
            amounts.requests,
        ]
        for claim in claims:
            args += [_opt(claim.limit_picousd), _opt(claim.limit_tokens)]
            args += [_opt(claim.limit_requests), _ttl(claim.expires_at_ms, now_ms)]
        reply = await self._reserve(keys=self._keys(claims), args=args)
        verdict = _text(reply[0])
        if verdict == "rebuild":
            return NeedsRebuild(tuple(int(i) for i in reply[1]))
        if verdict == "refuse":
            index = int(reply[1])
            return Refused(index, _state(claims[index].counter, reply[2]))
        return Admitted(tuple(_state(c.counter, s) for c, s in zip(claims, reply[1], strict=True)))

    async def settle(
        self, hold_id: str, claims: Sequence[Claim], actual: Amounts, reserved: Amounts
    ) -> tuple[CounterState, ...]:
        args: list[str | int] = [
            _member(hold_id, reserved),
            actual.picousd,
            actual.tokens,
            actual.requests,
        ]
        args += [reserved.picousd, reserved.tokens, reserved.requests]
        reply = await self._settle(keys=self._keys(claims), args=args)
        return tuple(_state(c.counter, s) for c, s in zip(claims, reply, strict=True))

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        args: list[str | int] = [
            spent.picousd,
            spent.tokens,
            spent.requests,
            _ttl(claim.expires_at_ms, now_ms),
        ]
        await self._initialize(keys=self._keys([claim]), args=args)

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        reply = await self._read(keys=self._keys(claims), args=[now_ms])
        return tuple(
            _state(c.counter, s) if s else None for c, s in zip(claims, reply, strict=True)
        )

    async def aclose(self) -> None:
        await self.redis.aclose()


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
