"""Helpers for the prompt-cache tests: a gateway on either cache store, Redis under a prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from gateway.cache import PromptCache
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway, service_unavailable
from tests.fake_upstream import RunningUpstream

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
STORES = ["memory", "redis"]
QUESTION = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


def shared_redis() -> str:
    """The Redis server of the test environment (skipped loudly without it, failed in CI)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {REDIS_URL}", exc)
    return REDIS_URL


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def cache_section(**overrides: Any) -> dict[str, Any]:
    # A generous Redis deadline in tests: the 50 ms default is for production hosts, not a
    # shared two-core CI box; the slow-Redis test sets its own.
    section: dict[str, Any] = {"redis_timeout_ms": 500, "redis_retry_after_s": 0.2}
    section.update(overrides)
    return section


@asynccontextmanager
async def cached_gateway(
    kind: str,
    upstream: RunningUpstream,
    tmp_path: Path,
    *,
    store_url: str | None = None,
    redis_url: str | None = None,
    clean_redis: bool = True,
    router_enabled: bool = True,
    **cache: Any,
) -> AsyncIterator[InProcessGateway]:
    """An in-process gateway whose cache is in process or in Redis under a fresh key prefix."""
    prefix = cache.pop("key_prefix", None) or f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    section = cache_section(**cache)
    overrides: dict[str, Any] = {}
    if kind == "redis":
        redis_url = redis_url or shared_redis()
        section.update(backend="redis", key_prefix=prefix)
    else:
        section["backend"] = "memory"
    config = gateway_config(store_url or f"sqlite:///{tmp_path / 'gw.db'}", upstream)
    config["store"]["redis_url"] = redis_url
    overrides["cache"] = section
    overrides["router"] = {"enabled": router_enabled}
    config.update(overrides)
    try:
        async with in_process_gateway(config) as gw:
            yield gw
    finally:
        if kind == "redis" and redis_url and clean_redis:
            try:
                delete_prefix(redis_url, prefix)
            except redis.RedisError:
                pass


def prompt_cache(gw: InProcessGateway) -> PromptCache:
    cache: PromptCache = gw.app.state.gateway.cache
    return cache


async def ask(
    gw: InProcessGateway,
    *,
    model: str = "direct",
    messages: list[dict[str, Any]] | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": messages or QUESTION, **fields}
    body.setdefault("temperature", 0)
    auth = {"authorization": f"Bearer {key or gw.key}", **(headers or {})}
    return await gw.client.post("/v1/chat/completions", content=orjson.dumps(body), headers=auth)


def upstream_calls(upstream: RunningUpstream) -> int:
    return len(upstream.fake.requests)
