"""Anthropic's Message Batches (issue 26): the anthropic SDK's batch flow against the gateway,
whose lines run on the OpenAI batch machinery (a fake provider's batch API, or line by line);
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import pytest

from tests.batch_support import (
    DEADLINE_S,
    DIRECT_LINE_COST,
    LINE_COST,
    assert_released_and_not_charged,
    batch_config,
    budget_usage,
    set_budget,
    spend_rows,
)
from tests.conftest import InProcessGateway, in_process_gateway
from tests.fake_batch_provider import RunningBatchProvider
from tests.fake_upstream import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream


@pytest.fixture
async def gw(
    store_url: str, upstream: RunningUpstream, provider: RunningBatchProvider
) -> AsyncIterator[InProcessGateway]:
    # The same gateway as the OpenAI batch tests: `bulk` on the fake provider's batch API.
    config = batch_config(store_url, upstream, provider, max_file_bytes=64_000)
    async with in_process_gateway(config) as running:
        yield running


def sdk(gw: InProcessGateway, key: str | None = None) -> anthropic.AsyncAnthropic:
    """The real anthropic SDK, over the gateway's in-process transport (`x-api-key`)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app), base_url="http://gateway")
    return anthropic.AsyncAnthropic(
        base_url="http://gateway", api_key=key or gw.key, http_client=http, max_retries=0
    )


def request(custom_id: str, text: str, model: str = "bulk", **params: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "params": {"model": model, "max_tokens": 50, "messages": messages, **params},
    }


async def until(client: anthropic.AsyncAnthropic, batch_id: str, status: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == status:
            return batch
        assert time.monotonic() < deadline, f"batch stayed {batch.processing_status}"
        await asyncio.sleep(0.05)


async def reserved(gw: InProcessGateway, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while (usage := await budget_usage(gw))["reserved_requests"] != count:
        assert time.monotonic() < deadline, usage
        await asyncio.sleep(0.05)
    return usage


async def test_a_message_batch_answers_in_order_in_anthropics_shape_at_the_batch_price(
    gw: InProcessGateway, provider: RunningBatchProvider, store_url: str
) -> None:
    await set_budget(gw)
    client = sdk(gw)
    batch = await client.messages.batches.create(
        requests=[
            request("first", "one", stop_sequences=["never"]),  # type: ignore[list-item]
            request("no-max", "x") | {"params": {"model": "bulk", "messages": []}},  # type: ignore[list-item]
            request("second", "two"),  # type: ignore[list-item]
            request("third", "three", model="auto"),  # type: ignore[list-item]
            request("top-k", "four", top_k=5),  # type: ignore[list-item]
        ]
    )
    assert batch.id.startswith("msgbatch") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 5 and batch.results_url is None
    # `auto` routes the third to `direct` (no batch API): it runs at once; the two lines on
    # `bulk` stay held while the provider works on its job.
    held = await reserved(gw, 2)
    assert Decimal(held["reserved_usd"]) > 0
    (direct,) = await spend_rows(store_url, 1)
    assert (direct.deployment, direct.cost_usd) == ("direct", DIRECT_LINE_COST)
    assert provider.fake.batches, "the bulk lines went to the provider's batch API"
    # The provider was sent the translation of the Messages params: a chat request.
    (job,) = provider.fake.batches
    sent = [r["body"] for r in provider.fake.requests(job)]
    assert [m["messages"][-1]["content"] for m in sent] == ["one", "two"]
    assert all(r["max_completion_tokens"] == 50 for r in sent)
    processing = await client.messages.batches.retrieve(batch.id)
    assert processing.processing_status == "in_progress"
    counts = processing.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (2, 1, 2)

    provider.fake.complete()
    ended = await until(client, batch.id, "ended")
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled) == (0, 3, 2, 0)
    assert ended.ended_at is not None and ended.results_url is not None
    results = [r async for r in await client.messages.batches.results(batch.id)]
    assert [r.custom_id for r in results] == ["first", "no-max", "second", "third", "top-k"]
    assert [r.result.type for r in results] == [
        "succeeded",
        "errored",
        "succeeded",
        "succeeded",
        "errored",
    ]
    texts = [r.result.message.content[0].text for r in results if r.result.type == "succeeded"]  # type: ignore[union-attr]
    assert texts == ["echo: one", "echo: two", ANSWER]
    first = results[0].result.message  # type: ignore[union-attr]
    assert (first.type, first.role, first.stop_reason) == ("message", "assistant", "end_turn")
    assert (first.usage.input_tokens, first.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    refused = [r.result.error.error for r in results if r.result.type == "errored"]
    assert [e.type for e in refused] == ["invalid_request_error"] * 2
    assert "top_k" in refused[1].message

    # The three answered lines; the two refused at validation were never routed (no row). Waiting
    # for five would wait out spend_rows' whole deadline.
    rows = await spend_rows(store_url, 3)
    answered = [r for r in rows if r.status == 200]
    assert len(answered) == len(rows) == 3
    assert sorted(r.cost_usd for r in answered) == [LINE_COST, LINE_COST, DIRECT_LINE_COST]
    assert {(r.api, r.latency_class) for r in answered} == {("batch", "batch")}
    assert all(r.route_reason.startswith(f"batch {batch.id}: ") for r in answered)
    settled = await budget_usage(gw)
    assert Decimal(settled["reserved_usd"]) == 0 and settled["reserved_requests"] == 0
    assert Decimal(settled["spent_usd"]) == 2 * LINE_COST + DIRECT_LINE_COST


async def test_a_cancelled_message_batch_releases_its_holds_and_its_requests_are_canceled(
    gw: InProcessGateway, provider: RunningBatchProvider, store_url: str
) -> None:
    await set_budget(gw)
    client = sdk(gw)
    batch = await client.messages.batches.create(
        requests=[request("a", "one"), request("b", "two")]  # type: ignore[list-item]
    )
    await reserved(gw, 2)
    canceling = await client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    ended = await until(client, batch.id, "ended")
    assert (ended.request_counts.canceled, ended.request_counts.succeeded) == (2, 0)
    assert len(provider.fake.cancelled) == 1
    results = [r async for r in await client.messages.batches.results(batch.id)]
    assert [(r.custom_id, r.result.type) for r in results] == [("a", "canceled"), ("b", "canceled")]
    await assert_released_and_not_charged(gw, store_url)


async def test_a_key_never_sees_another_teams_message_batches(gw: InProcessGateway) -> None:
    await gw.admin.team("other")
    other = sdk(gw, (await gw.admin.key("other"))["key"])
    client = sdk(gw)
    batch = await client.messages.batches.create(requests=[request("a", "x")])  # type: ignore[list-item]
    for call in (
        other.messages.batches.retrieve(batch.id),
        other.messages.batches.cancel(batch.id),
        other.messages.batches.results(batch.id),
    ):
        with pytest.raises(anthropic.NotFoundError) as missing:
            await call
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert [b.id async for b in other.messages.batches.list()] == []
    assert [b.id async for b in client.messages.batches.list()] == [batch.id]
    # An OpenAI batch is no message batch.
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve("batch-0123")


async def test_bad_requests_and_early_results_are_anthropic_errors(gw: InProcessGateway) -> None:
    client = sdk(gw)
    with pytest.raises(anthropic.BadRequestError) as twice:
        await client.messages.batches.create(
            requests=[request("a", "x"), request("a", "y")]  # type: ignore[list-item]
        )
    assert twice.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "used twice" in twice.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.create(requests=[])
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(gw, "sk-not-a-key").messages.batches.create(requests=[request("a", "x")])  # type: ignore[list-item]
    batch = await client.messages.batches.create(requests=[request("a", "x")])  # type: ignore[list-item]
    early = await gw.client.get(
        f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": gw.key}
    )
    assert early.status_code == 400
    assert early.json()["error"]["type"] == "invalid_request_error"
