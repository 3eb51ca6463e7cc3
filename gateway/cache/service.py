"""The prompt cache as the request path sees it: look up before the upstream call, store after."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.cache.config import CacheSettings
from gateway.cache.entry import CachedAnswer, CorruptEntry
from gateway.cache.guard import PromptGuard, prompt_guard
from gateway.cache.keys import CacheKey, cache_key
from gateway.cache.semantic import BadEmbedding, SemanticIndex, Vector
from gateway.cache.stores import CacheStore, CacheUnavailable, MemoryStore, RedisStore
from gateway.schemas import ChatRequest
from router import prompt_from_messages

log = logging.getLogger("rightsize.cache")


@dataclass(slots=True)
class CacheMetrics:
    """Counters since start; `skipped`, `bypassed`, `semantic_skipped` and `semantic_refused`
    are keyed by reason."""

    hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stores: int = 0
    corrupt: int = 0
    invalidated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    bypassed: Counter[str] = field(default_factory=Counter)
    semantic_skipped: Counter[str] = field(default_factory=Counter)
    semantic_refused: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "semantic_hits": self.semantic_hits,
            "misses": self.misses,
            "stores": self.stores,
            "corrupt": self.corrupt,
            "invalidated": self.invalidated,
            "skipped": dict(self.skipped),
            "bypassed": dict(self.bypassed),
            "semantic_skipped": dict(self.semantic_skipped),
            "semantic_refused": dict(self.semantic_refused),
        }


class CacheObserver(Protocol):
    """Told each lookup's result and each bypass, as they happen (gateway.metrics.Metrics)."""

    def cache_result(self, team: str, result: str) -> None: ...

    def cache_bypass(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The cache's verdict on one request, carried to the store step after the upstream call."""

    key: CacheKey | None = None
    write: bool = False
    answer: CachedAnswer | None = None
    tier: Literal["exact", "semantic"] | None = None
    similarity: float | None = None
    vector: Vector | None = None
    guard: PromptGuard | None = None

    @property
    def hit(self) -> bool:
        return self.answer is not None


NOT_CACHED = CacheLookup()


class PromptCache:
    """Team-scoped exact cache on a store, plus the opt-in semantic tier in process."""

    def __init__(
        self,
        settings: CacheSettings,
        store: CacheStore,
        semantic: SemanticIndex,
        observer: CacheObserver | None = None,
    ) -> None:
        self.settings = settings
        self.backend = store
        self.semantic = semantic
        self.metrics = CacheMetrics()
        self.observer = observer
        self._told_no_embedding: set[str] = set()

    @classmethod
    def build(
        cls, settings: CacheSettings, redis_url: str | None, observer: CacheObserver | None = None
    ) -> PromptCache:
        backend = settings.backend
        if backend == "auto":
            backend = "redis" if redis_url else "memory"
        store: CacheStore
        if backend == "redis":
            if not redis_url:
                raise ValueError("cache.backend is redis but store.redis_url is not set")
            store = RedisStore(
                redis_url,
                settings.key_prefix,
                timeout_s=settings.redis_timeout_ms / 1000,
                retry_after_s=settings.redis_retry_after_s,
                near_ttl_s=settings.redis_near_ttl_s,
                near_max_bytes=settings.max_bytes,
            )
        else:
            store = MemoryStore(settings.max_bytes)
        semantic = SemanticIndex(
            settings.semantic.dimensions, settings.semantic.max_entries_per_team
        )
        semantic_teams = sorted(t for t, p in settings.teams.items() if p.semantic)
        log.info(
            "prompt cache: %s; %s store, ttl %gs; semantic tier for %s",
            "on" if settings.enabled else "off",
            backend,
            settings.ttl_s,
            ", ".join(semantic_teams) or "no team",
        )
        return cls(settings, store, semantic, observer)

    async def lookup(
        self,
        team: str,
        route: str,
        chat: ChatRequest,
        headers: Mapping[str, str],
        embedding: object | None = None,
    ) -> CacheLookup:
        """A hit, or a miss that says whether the answer may be stored; never raises."""
        reason = self._not_cacheable(team, chat)
        if reason is not None:
            self.metrics.skipped[reason] += 1
            self._bypass(reason)
            return NOT_CACHED
        directives = _cache_control(headers)
        if "no-store" in directives:
            self.metrics.skipped["no-store"] += 1
            self._bypass("no-store")
            return NOT_CACHED
        vector = self._vector(team, embedding)
        # The partition only where the semantic tier will read it (a vector: lookup and store).
        key = cache_key(team, route, chat, semantic=vector is not None)
        if "no-cache" not in directives:
            answer = await self._read(team, key.exact)
            if answer is not None:
                self.metrics.hits += 1
                self._result(team, "hit")
                return CacheLookup(key=key, answer=answer, tier="exact")
        # Only past the exact tier: the guard costs 0.1 to 1 ms of tokenising on long prompts.
        guard = _guard(chat) if vector is not None else None
        miss = CacheLookup(key=key, write=True, vector=vector, guard=guard)
        if "no-cache" in directives:
            self.metrics.skipped["no-cache"] += 1
            self._bypass("no-cache")
            return miss
        if vector is not None and guard is not None:
            semantic = await self._semantic(team, key, vector, guard)
            if semantic is not None:
                return semantic
        self.metrics.misses += 1
        self._result(team, "miss")
        return miss

    async def store(self, lookup: CacheLookup, deployment: str, completion: dict[str, Any]) -> None:
        """Keep a finished answer (with its usage) for the lookup's key; never raises."""
        key = lookup.key
        if key is None or not lookup.write:
            return
        entry = CachedAnswer(key.team, key.exact, deployment, completion)
        raw = entry.encode()
        if len(raw) > self.settings.max_entry_bytes:
            self.metrics.skipped["too_large"] += 1
            self._bypass("too_large")
            return
        try:
            await self.backend.set(key.team, key.exact, raw, self.settings.ttl_s)
        except CacheUnavailable as exc:
            self.metrics.bypassed[exc.reason] += 1
            self._bypass(f"store_{exc.reason}")
            return
        self.metrics.stores += 1
        if lookup.vector is not None and lookup.guard is not None:
            partition = _semantic_partition(key, lookup.guard)
            self.semantic.add(key.team, partition, key.exact, lookup.vector, lookup.guard)

    async def invalidate_team(self, team: str) -> int:
        """Drop every entry of the team from the store and the semantic index."""
        deleted = await self.backend.invalidate_team(team)
        self.semantic.invalidate_team(team)
        self.metrics.invalidated += deleted
        log.info("prompt cache: invalidated %d entries of team %s", deleted, team)
        return deleted

    def stats(self) -> dict[str, Any]:
        return {"store": self.backend.name, **self.metrics.as_dict()}

    async def start(self) -> None:
        """Connect the store before the first request, so that no request pays for it."""
        await self.backend.start()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def _result(self, team: str, result: str) -> None:
        if self.observer is not None:
            self.observer.cache_result(team, result)

    def _bypass(self, reason: str) -> None:
        if self.observer is not None:
            self.observer.cache_bypass(reason)

    def _not_cacheable(self, team: str, chat: ChatRequest) -> str | None:
        policy = self.settings.team(team)
        if not self.settings.enabled or not policy.enabled:
            return "disabled"
        if chat.logprobs or chat.web_search_options is not None:
            return "uncacheable"
        if chat.modalities and "audio" in chat.modalities:
            return "uncacheable"
        sampled = policy.sampled if policy.sampled is not None else self.settings.sampled
        if chat.temperature != 0 and not sampled:
            return "not_deterministic"
        return None

    def semantic_enabled(self, team: str) -> bool:
        """True when the team opted in to the semantic tier (its requests need an embedding)."""
        return self.settings.team(team).semantic

    def _vector(self, team: str, embedding: object | None) -> Vector | None:
        if not self.settings.team(team).semantic:
            return None
        if embedding is None:
            # Visible, not silent: a counter always, and one log line per team.
            self.metrics.semantic_skipped["no_embedding"] += 1
            if team not in self._told_no_embedding:
                self._told_no_embedding.add(team)
                log.warning(
                    "prompt cache: the semantic tier is on for team %s but requests carry no "
                    "embedding (the router supplies it); semantic lookups are skipped",
                    team,
                )
            return None
        try:
            return self.semantic.vector(embedding)
        except BadEmbedding as exc:
            self.metrics.semantic_skipped["bad_embedding"] += 1
            log.warning("prompt cache: semantic lookup skipped for team %s: %s", team, exc)
            return None

    async def _semantic(
        self, team: str, key: CacheKey, vector: Vector, guard: PromptGuard
    ) -> CacheLookup | None:
        partition = _semantic_partition(key, guard)
        neighbour = self.semantic.nearest(team, partition, vector)
        policy = self.settings.team(team)
        threshold = policy.semantic_threshold or self.settings.semantic.threshold
        if neighbour is None or neighbour.similarity < threshold:
            return None
        # Only the nearest is checked: a refused nearest means a miss, never a farther hit.
        refusal = guard.refuses(neighbour.guard) if neighbour.guard is not None else "no_guard"
        if refusal is not None:
            self.metrics.semantic_refused[refusal] += 1
            return None
        answer = await self._read(team, neighbour.key)
        if answer is None:
            self.semantic.remove(team, partition, neighbour.key)
            return None
        self.metrics.semantic_hits += 1
        self._result(team, "semantic_hit")
        return CacheLookup(key=key, answer=answer, tier="semantic", similarity=neighbour.similarity)

    async def _read(self, team: str, key: str) -> CachedAnswer | None:
        try:
            raw = await self.backend.get(team, key)
        except CacheUnavailable as exc:
            self.metrics.bypassed[exc.reason] += 1
            self._bypass(f"store_{exc.reason}")
            return None
        if raw is None:
            return None
        try:
            return CachedAnswer.decode(raw, team=team, key=key)
        except CorruptEntry as exc:
            self.metrics.corrupt += 1
            log.warning(
                "prompt cache: entry %s of team %s is unusable (%s); a miss", key, team, exc
            )
            try:
                await self.backend.delete(team, key)
            except CacheUnavailable:
                pass
            return None


def _guard(chat: ChatRequest) -> PromptGuard:
    """The guard of the text the router embedded for this request (what the embedding misses)."""
    return prompt_guard(prompt_from_messages(chat.upstream_payload()["messages"]))


def _semantic_partition(key: CacheKey, guard: PromptGuard) -> str:
    """Where the semantic tier looks: the same context and the same numbers and negations."""
    return f"{key.partition}:{guard.signature}"


def _cache_control(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("cache-control") or ""
    return {part.strip().lower() for part in value.split(",") if part.strip()}
