"""Prompt cache: team-scoped exact cache (in process or Redis) and an opt-in semantic tier.

The public names below are imported on first use: `gateway.settings` needs only
`gateway.cache.config`, and importing a submodule runs this file first, so an eager list here
would load numpy, redis and the router for every command that reads the configuration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.cache.config import CacheSettings, SemanticSettings, TeamCacheSettings
    from gateway.cache.entry import CachedAnswer, CorruptEntry, StreamAssembler
    from gateway.cache.guard import PromptGuard, prompt_guard
    from gateway.cache.keys import CacheKey, cache_key
    from gateway.cache.semantic import BadEmbedding, Neighbour, SemanticIndex
    from gateway.cache.service import NOT_CACHED, CacheLookup, CacheMetrics, PromptCache
    from gateway.cache.stores import CacheStore, CacheUnavailable, MemoryStore, RedisStore

_HOMES = {
    "CacheSettings": "config",
    "SemanticSettings": "config",
    "TeamCacheSettings": "config",
    "CachedAnswer": "entry",
    "CorruptEntry": "entry",
    "StreamAssembler": "entry",
    "PromptGuard": "guard",
    "prompt_guard": "guard",
    "CacheKey": "keys",
    "cache_key": "keys",
    "BadEmbedding": "semantic",
    "Neighbour": "semantic",
    "SemanticIndex": "semantic",
    "NOT_CACHED": "service",
    "CacheLookup": "service",
    "CacheMetrics": "service",
    "PromptCache": "service",
    "CacheStore": "stores",
    "CacheUnavailable": "stores",
    "MemoryStore": "stores",
    "RedisStore": "stores",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gateway.cache.{home}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
