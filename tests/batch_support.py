"""The batch tests' gateway (`bulk` on a fake provider's batch API), driven by the real openai
SDK: batch files, batches and what they spend and hold."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import openai
import orjson
from openai.types import Batch, FileObject

from gateway.store import Store
from tests.conftest import PRICE_SMALL, InProcessGateway, gateway_config
from tests.fake_batch_provider import RunningBatchProvider
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream

# PRICE_SMALL is $0.15 / $0.6 per million tokens; its batch price (unset) is half of that.
LINE_COST = (PROMPT_TOKENS * Decimal("0.075") + COMPLETION_TOKENS * Decimal("0.3")) / 10**6
# PRICE_DIRECT ($1.1 / $4.4) halved likewise.
DIRECT_LINE_COST = (PROMPT_TOKENS * Decimal("0.55") + COMPLETION_TOKENS * Decimal("2.2")) / 10**6
DEADLINE_S = 60


def batch_config(
    store_url: str, upstream: RunningUpstream, provider: RunningBatchProvider, **batches: Any
) -> dict[str, Any]:
    """The test gateway with `bulk`, a deployment on the fake provider's batch API; `batches`
    added to (or replacing) its quick poll and 30 s lease."""
    config = gateway_config(store_url, upstream)
    config["models"].append(
        {
            "name": "bulk",
            "model": "openai/fake-ok",
            "api_base": provider.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "price": PRICE_SMALL,
        }
    )
    config["batches"] = {"poll_interval_s": 0.05, "lease_s": 30, **batches}
    return config


def sdk(gw: InProcessGateway, key: str | None = None) -> openai.AsyncOpenAI:
    """The real openai SDK, over the gateway's in-process transport."""
    return openai.AsyncOpenAI(
        api_key=key or gw.key, base_url="http://gateway/v1", http_client=gw.client
    )


def jsonl(*lines: dict[str, Any] | bytes) -> bytes:
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def line(custom_id: str, text: str, model: str = "bulk") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def upload(client: openai.AsyncOpenAI, content: bytes) -> FileObject:
    """A batch input file (`in.jsonl`)."""
    return await client.files.create(file=("in.jsonl", content), purpose="batch")


async def create_batch(client: openai.AsyncOpenAI, input_file_id: str) -> Batch:
    """A chat-completions batch of the file's lines, in the 24 h window."""
    return await client.batches.create(
        input_file_id=input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def start_batch(client: openai.AsyncOpenAI, *lines: dict[str, Any] | bytes) -> Batch:
    """Upload the lines as a file and start a batch of them."""
    uploaded = await upload(client, jsonl(*lines))
    return await create_batch(client, uploaded.id)


async def until(client: openai.AsyncOpenAI, batch_id: str, *statuses: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stayed {batch.status}"
        await asyncio.sleep(0.05)


async def set_budget(gw: InProcessGateway) -> None:
    body = {"team": "search", "period": "monthly", "limit_usd": "10"}
    response = await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)
    assert response.status_code == 200, response.text


async def budget_usage(gw: InProcessGateway) -> dict[str, Any]:
    response = await gw.client.get("/admin/teams/search/usage", headers=gw.admin.headers)
    (usage,) = response.json()["data"]
    return dict(usage)


async def spend_rows(store_url: str, count: int) -> list[Any]:
    store = Store.connect(store_url)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            rows = [r for r in await store.spend(team="search", limit=1000) if r.api == "batch"]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()


async def two_held_lines(gw: InProcessGateway, client: openai.AsyncOpenAI) -> Batch:
    """A batch of two `bulk` lines in progress at the provider, both held on the team's budget."""
    await set_budget(gw)
    batch = await start_batch(client, line("a", "one"), line("b", "two"))
    await until(client, batch.id, "in_progress")
    assert (await budget_usage(gw))["reserved_requests"] == 2
    return batch


async def assert_released_and_not_charged(gw: InProcessGateway, store_url: str) -> None:
    """Nothing held on the team's budget, nothing spent, no batch spend row."""
    usage = await budget_usage(gw)
    assert Decimal(usage["reserved_usd"]) == 0 and usage["reserved_requests"] == 0
    assert Decimal(usage["spent_usd"]) == 0
    assert await spend_rows(store_url, 0) == []


async def error_codes(client: openai.AsyncOpenAI, batch: Batch) -> list[str]:
    """The error code of each line in the batch's error file."""
    assert batch.error_file_id is not None
    errors = (await client.files.content(batch.error_file_id)).read().splitlines()
    return [orjson.loads(e)["error"]["code"] for e in errors]
