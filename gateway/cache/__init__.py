"""Prompt cache: team-scoped exact cache (in process or Redis) and an opt-in semantic tier."""

from gateway.cache.config import CacheSettings, SemanticSettings, TeamCacheSettings
from gateway.cache.entry import CachedAnswer, CorruptEntry, StreamAssembler
from gateway.cache.guard import PromptGuard, prompt_guard
from gateway.cache.keys import CacheKey, cache_key
from gateway.cache.semantic import BadEmbedding, Neighbour, SemanticIndex
from gateway.cache.service import NOT_CACHED, CacheLookup, CacheMetrics, PromptCache
from gateway.cache.stores import CacheStore, CacheUnavailable, MemoryStore, RedisStore

__all__ = [
    "NOT_CACHED",
    "BadEmbedding",
    "CacheKey",
    "CacheLookup",
    "CacheMetrics",
    "CacheSettings",
    "CacheStore",
    "CacheUnavailable",
    "CachedAnswer",
    "CorruptEntry",
    "MemoryStore",
    "Neighbour",
    "PromptCache",
    "PromptGuard",
    "RedisStore",
    "SemanticIndex",
    "SemanticSettings",
    "StreamAssembler",
    "TeamCacheSettings",
    "cache_key",
    "prompt_guard",
]
