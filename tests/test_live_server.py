"""A live `rightsize serve` process on loopback, driven by the official openai and anthropic
SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from tests.conftest import (
    MASTER_KEY,
    LiveServer,
    gateway_config,
    live_server,
    live_spend_row,
)
from tests.fake_upstream import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(
    module_store_url: str, upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    config = gateway_config(module_store_url, upstream)
    with live_server(config, tmp_path_factory.mktemp("live")) as live:
        yield live


@pytest.fixture(scope="module")
def api_key(server: LiveServer) -> str:
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=admin) as client:
        assert client.post("/admin/teams", json={"name": "search"}).status_code == 201
        response = client.post("/admin/keys", json={"team": "search"})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


def expected_cost(input_per_mtok: str, output_per_mtok: str) -> Decimal:
    million = Decimal(1_000_000)
    return (
        PROMPT_TOKENS * Decimal(input_per_mtok) + COMPLETION_TOKENS * Decimal(output_per_mtok)
    ) / million


@pytest.mark.parametrize(
    ("model", "tier", "cost"),
    [
        ("small", "light", expected_cost("0.15", "0.6")),
        ("direct", "standard", expected_cost("1.1", "4.4")),
    ],
)
def test_sync_sdk_completion_has_answer_usage_cost_and_headers(
    server: LiveServer, api_key: str, model: str, tier: str, cost: Decimal
) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert raw.headers["x-rightsize-model"] == model
    assert raw.headers["x-rightsize-tier"] == tier
    assert raw.headers["x-rightsize-cache"] == "miss"
    assert Decimal(raw.headers["x-rightsize-cost-usd"]) == cost
    assert float(raw.headers["x-rightsize-overhead-ms"]) >= 0
    row = live_spend_row(server, raw.headers["x-request-id"])
    assert (row["team"], row["deployment"], row["status"]) == ("search", model, 200)
    assert Decimal(row["cost_usd"]) == cost


async def test_async_sdk_stream_yields_the_answer_then_a_usage_chunk_with_cost(
    server: LiveServer, api_key: str
) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=api_key)
    raw = await client.chat.completions.with_raw_response.create(
        model="direct", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-rightsize-model"] == "direct"
    assert raw.headers["content-type"].startswith("text/event-stream")
    text, usage_chunks = [], []
    async for chunk in raw.parse():
        if chunk.usage is not None:
            usage_chunks.append(chunk)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
    assert "".join(text) == ANSWER
    assert len(usage_chunks) == 1
    usage = usage_chunks[0].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    cost = expected_cost("1.1", "4.4")
    assert Decimal(usage.model_extra["cost_usd"]) == cost
    row = live_spend_row(server, raw.headers["x-request-id"])
    assert row["stream"] is True and Decimal(row["cost_usd"]) == cost


def test_sync_sdk_stream_through_litellm_without_usage_option_sends_no_usage_chunk(
    server: LiveServer, api_key: str
) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key)
    chunks = list(client.chat.completions.create(model="small", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert all(c.usage is None for c in chunks)


async def test_async_sdk_completion_through_a_tier_name(server: LiveServer, api_key: str) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=api_key)
    raw = await client.chat.completions.with_raw_response.create(model="light", messages=MESSAGES)
    assert raw.headers["x-rightsize-model"] == "small"
    assert raw.parse().choices[0].message.content == ANSWER


def test_models_endpoint_lists_auto_tiers_and_configured_models(
    server: LiveServer, api_key: str
) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key)
    ids = [m.id for m in client.models.list()]
    assert ids[:3] == ["auto", "light", "standard"]
    assert {"small", "direct"} <= set(ids)


def test_sdk_raises_its_authentication_error_for_an_unknown_key(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="rs-not-a-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="small", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"


def test_anthropic_sdk_message_and_stream_over_http(server: LiveServer, api_key: str) -> None:
    # Real sockets and the SDK's own HTTP client: the event stream parsed as it arrives.
    client = anthropic.Anthropic(base_url=server.base_url, api_key=api_key, max_retries=0)
    message = client.messages.create(model="small", max_tokens=32, messages=MESSAGES)
    assert [b.text for b in message.content if b.type == "text"] == [ANSWER]
    with client.messages.stream(model="direct", max_tokens=32, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == ANSWER
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    row = live_spend_row(server, request_id)
    assert row["stream"] is True and Decimal(row["cost_usd"]) == expected_cost("1.1", "4.4")
