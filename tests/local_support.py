"""A gateway with local engines in front of fake engines, driven by the real openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from tests.conftest import PRICE_DIRECT, InProcessGateway, gateway_config
from tests.fake_upstream import RunningUpstream


def local_config(
    tmp_path: Path,
    upstream: RunningUpstream,
    engine: str,
    replicas: list[str],
    **local_backend: Any,
) -> dict[str, Any]:
    """Tier `local` (model `gpu`: the engine's replicas) spilling to tier `remote` (model
    `cloud`: the fake upstream)."""
    models = [
        {"name": "gpu", "model": "openai/local-model", "engine": engine, "replicas": replicas},
        {
            "name": "cloud",
            "model": "openai/fake-ok",
            "api_base": upstream.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "price": PRICE_DIRECT,
        },
    ]
    policy = {
        "tiers": [
            {"name": "local", "deployments": ["gpu"]},
            {"name": "remote", "deployments": ["cloud"], "min_demand": 0.5},
        ]
    }
    return gateway_config(
        f"sqlite:///{tmp_path / 'gw.db'}",
        upstream,
        models=models,
        policy=policy,
        router={"enabled": False},
        local_backend=local_backend,
    )


def sdk(gw: InProcessGateway) -> openai.AsyncOpenAI:
    """The real openai client over the in-process app; no SDK retries to hide an error."""
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, max_retries=0
    )


async def ask(client: openai.AsyncOpenAI, content: str = "hello") -> tuple[str, str, str]:
    """(deployment that served, answer text, request id) of one `local` tier request."""
    raw = await client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": content}]
    )
    completion = raw.parse()
    text = completion.choices[0].message.content or ""
    return raw.headers["x-rightsize-model"], text, raw.headers["x-request-id"]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Seconds until `condition` holds (polled every 10 ms); AssertionError past the timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started
