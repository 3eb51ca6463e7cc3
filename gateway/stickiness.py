"""Session stickiness: a continuing conversation is served no lower than its highest recent tier.

A conversation is known by the key that sends it and the turns that stay the same as it grows:
the first system message and the first user turn. After each routed request the tier the policy
chose is remembered for `routing.stickiness.ttl_s`; a later turn of the same conversation gets
the highest tier remembered as its floor (`policies.TierFloor`), so that an agent keeps its
model and the provider's prompt cache stays warm. The state lives where the other shared state
does: in process on the embedded default, in Redis when `store.redis_url` is set, so that
replicas agree. Redis failing costs that request its stickiness, never the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
from redis.exceptions import RedisError

from gateway.redis_client import deadline_client
from gateway.settings import StickinessSettings
from policies import TierFloor

log = logging.getLogger("rightsize.stickiness")

T = TypeVar("T")
_SYSTEM_ROLES = ("system", "developer")
# After a Redis failure, requests skip it this long: an outage costs nothing per request.
_RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class Conversation:
    """Which conversation a request belongs to, and whether it continues one (a later turn)."""

    id: str
    continuing: bool


@dataclass(frozen=True, slots=True)
class Served:
    """A tier that served a conversation, and when (seconds since the epoch)."""

    tier: str
    at: float

    def floor(self) -> TierFloor:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return TierFloor(self.tier, f"conversation served by {self.tier!r} at {when}")


def conversation_of(key_id: str, messages: Sequence[Mapping[str, Any]]) -> Conversation | None:
    """The conversation of a chat sent by a key; None without a user turn. It continues one
    when it has two user turns or more, or any assistant turn."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        return None
    system = next((m.get("content") for m in messages if m.get("role") in _SYSTEM_ROLES), None)
    # Content as sent (a string or a list of parts), keys sorted: the same turn, the same bytes.
    identity = orjson.dumps([key_id, system, users[0].get("content")], option=orjson.OPT_SORT_KEYS)
    continuing = len(users) >= 2 or any(m.get("role") == "assistant" for m in messages)
    return Conversation(hashlib.blake2b(identity, digest_size=16).hexdigest(), continuing)


class StickinessStore(Protocol):
    """When each tier last served a conversation, forgotten `ttl_s` after that."""

    name: str

    async def served(self, conversation: str, tiers: Sequence[str]) -> dict[str, float]:
        """The tiers among `tiers` that served the conversation within the TTL, and when."""
        ...

    async def remember(self, conversation: str, tier: str, at: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStickiness:
    """In process, bounded: the least recently served conversations are dropped first."""

    name = "memory"

    def __init__(
        self, ttl_s: float, max_conversations: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_s
        self._max = max_conversations
        self._clock = clock
        self._served: OrderedDict[str, dict[str, float]] = OrderedDict()

    async def served(self, conversation: str, tiers: Sequence[str]) -> dict[str, float]:
        by_tier = self._served.get(conversation)
        if by_tier is None:
            return {}
        oldest = self._clock() - self._ttl
        for tier in [t for t, at in by_tier.items() if at <= oldest]:
            del by_tier[tier]
        if not by_tier:
            del self._served[conversation]
        return {t: by_tier[t] for t in tiers if t in by_tier}

    async def remember(self, conversation: str, tier: str, at: float) -> None:
        self._served.setdefault(conversation, {})[tier] = at
        self._served.move_to_end(conversation)
        while len(self._served) > self._max:
            self._served.popitem(last=False)

    async def aclose(self) -> None:
        self._served.clear()

    def __len__(self) -> int:
        return len(self._served)


class RedisStickiness:
    """One key per conversation and tier, `{prefix}{conversation}:{tier}`, holding when that
    tier last served it and expiring after the TTL: a write never overwrites another tier, so
    the highest tier served within the TTL survives a later, lower one (a capped turn, or a
    new chat that opens the same way) without a script. Each call has a short deadline."""

    name = "redis"

    def __init__(self, url: str, prefix: str, ttl_s: float, timeout_s: float) -> None:
        self._redis = deadline_client(url, timeout_s)
        self._prefix = prefix
        self._px = max(1, int(ttl_s * 1000))
        self._timeout = timeout_s

    def _key(self, conversation: str, tier: str) -> str:
        return f"{self._prefix}{conversation}:{tier}"

    async def served(self, conversation: str, tiers: Sequence[str]) -> dict[str, float]:
        keys = [self._key(conversation, t) for t in tiers]
        values = await self._call(self._redis.mget(keys))
        return {t: float(v) for t, v in zip(tiers, values, strict=True) if v is not None}

    async def remember(self, conversation: str, tier: str, at: float) -> None:
        await self._call(self._redis.set(self._key(conversation, tier), repr(at), px=self._px))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, operation: Awaitable[T]) -> T:
        async with asyncio.timeout(self._timeout):
            return await operation


class Stickiness:
    """The floor of a continuing conversation, and the memory of what served it; never raises."""

    def __init__(
        self,
        settings: StickinessSettings,
        store: StickinessStore,
        tiers: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self._tiers = tuple(tiers)
        self._clock = clock
        self._down_until = 0.0
        self._down_since: float | None = None

    @classmethod
    def build(
        cls,
        settings: StickinessSettings,
        redis_url: str | None,
        tiers: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> Stickiness:
        """In Redis when the deployment has one (replicas share it), else in process."""
        store: StickinessStore
        if redis_url:
            timeout = settings.redis_timeout_ms / 1000
            store = RedisStickiness(redis_url, settings.key_prefix, settings.ttl_s, timeout)
        else:
            store = MemoryStickiness(settings.ttl_s, settings.max_conversations, clock)
        log.info(
            "session stickiness: %s; %s store, ttl %gs",
            "on" if settings.enabled else "off",
            store.name,
            settings.ttl_s,
        )
        return cls(settings, store, tiers, clock)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and len(self._tiers) > 1

    async def highest(self, conversation: Conversation) -> Served | None:
        """The highest tier that served the conversation within the TTL; None on a failure."""
        served = await self._guarded(
            "read", lambda: self.store.served(conversation.id, self._tiers)
        )
        if not served:
            return None
        tier = max(served, key=self._tiers.index)
        return Served(tier, served[tier])

    async def remember(self, conversation: Conversation, tier: str) -> None:
        """Note that `tier` served the conversation now."""
        if tier in self._tiers:
            at = self._clock()
            await self._guarded("write", lambda: self.store.remember(conversation.id, tier, at))

    async def aclose(self) -> None:
        await self.store.aclose()

    async def _guarded(self, what: str, operation: Callable[[], Awaitable[T]]) -> T | None:
        now = time.monotonic()
        if now < self._down_until:
            return None
        try:
            result = await operation()
        except (TimeoutError, RedisError, OSError) as exc:
            self._down_until = now + _RETRY_AFTER_S
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "session stickiness: store %s failed (%r); requests are routed without it, "
                    "retrying in %gs",
                    what,
                    exc,
                    _RETRY_AFTER_S,
                )
            return None
        if self._down_since is not None:
            log.warning(
                "session stickiness: store back after %.1fs", time.monotonic() - self._down_since
            )
            self._down_since = None
        return result
