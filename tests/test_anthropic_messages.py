"""The official anthropic SDK against a live gateway (in process) with the fake OpenAI-format
upstream: POST /v1/messages and /v1/messages/count_tokens on the same pipeline as chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from gateway.tokens import chat_tokens, prompt_tokens
from tests.cache_support import cached_gateway
from tests.conftest import PRICE_DIRECT, InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import (
    ANSWER,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    TOOL_CALL,
    RunningUpstream,
)

# A 1x1 PNG: a real image, in case anything on the way decodes it.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
WEATHER_TOOL = {
    "name": TOOL_CALL["name"],
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    base = gateway_config(store_url, upstream)
    for name, transport in (("direct-tool", "openai_http"), ("small-tool", "litellm")):
        base["models"].append(
            {
                "name": name,
                "model": "openai/fake-tool",
                "api_base": upstream.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "transport": transport,
                "price": PRICE_DIRECT,
            }
        )
    return base


# Each OpenAI-format transport: the direct HTTP client and litellm.
TRANSPORTS = pytest.mark.parametrize("transport", ["direct", "small"])


@pytest.fixture
async def gw(store_url: str, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(config(store_url, upstream)) as running:
        yield running


def sdk(gw: InProcessGateway, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    """The SDK as a user builds it, on the in-process app (it sends the key as x-api-key)."""
    transport = httpx2.ASGITransport(app=gw.app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway")
    return anthropic.AsyncAnthropic(
        base_url="http://gateway", api_key=api_key or gw.key, http_client=http, max_retries=0
    )


def sent_upstream(upstream: RunningUpstream, marker: str) -> dict[str, Any]:
    """The last body the fake upstream received whose messages mention `marker`."""
    for request in reversed(upstream.fake.requests):
        if marker in orjson.dumps(request["body"]["messages"]).decode():
            return dict(request["body"])
    raise AssertionError(f"no upstream request mentions {marker!r}")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@TRANSPORTS
async def test_a_message_is_answered_as_an_anthropic_message(
    gw: InProcessGateway, transport: str
) -> None:
    message = await sdk(gw).messages.create(
        model=transport, max_tokens=64, messages=user("Say hello.")
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", ANSWER)]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )


async def test_the_request_is_translated_faithfully_for_an_openai_format_upstream(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await sdk(gw).messages.create(
        model="direct",
        max_tokens=50,
        system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Be kind."}],
        messages=user("translate-marker-1"),
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        # Gone from this SDK's signature, still sent by older SDKs and curl.
        extra_body={"temperature": 0.2, "top_p": 0.9},
    )
    body = sent_upstream(upstream, "translate-marker-1")
    assert body["messages"] == [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Be kind."},
            ],
        },
        {"role": "user", "content": "translate-marker-1"},
    ]
    assert "max_tokens" not in body
    assert (body["max_completion_tokens"], body["stop"], body["temperature"], body["top_p"]) == (
        50,
        ["END"],
        0.2,
        0.9,
    )
    assert body["user"] == "user-42"


async def test_a_system_prompt_string_becomes_the_system_message(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await sdk(gw).messages.create(
        model="direct", max_tokens=10, system="Answer in French.", messages=user("sys-marker")
    )
    assert sent_upstream(upstream, "sys-marker")["messages"][0] == {
        "role": "system",
        "content": "Answer in French.",
    }


@TRANSPORTS
async def test_a_streamed_message_reassembles_its_text_and_reports_final_usage(
    gw: InProcessGateway, transport: str
) -> None:
    async with sdk(gw).messages.stream(
        model=transport, max_tokens=64, messages=user("Stream, please.")
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == ANSWER
    assert [b.text for b in final.content if b.type == "text"] == [ANSWER]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )


async def test_a_stream_follows_the_event_sequence_the_sdk_parses(gw: InProcessGateway) -> None:
    stream = await sdk(gw).messages.create(
        model="direct", max_tokens=64, messages=user("Events."), stream=True
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    deltas = len(ANSWER.split(" "))
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    # Before the upstream has counted, the router's count; the upstream's in message_delta.
    assert start.message.usage.input_tokens == prompt_tokens(user("Events."))
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )


@TRANSPORTS
async def test_a_tool_use_round_trip(
    gw: InProcessGateway, upstream: RunningUpstream, transport: str
) -> None:
    client = sdk(gw)
    question = user(f"What is the weather in Paris? tool-marker-{transport}")
    called = await client.messages.create(
        model=f"{transport}-tool",
        max_tokens=64,
        messages=question,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    )
    assert called.stop_reason == "tool_use"
    [block] = called.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (
        TOOL_CALL["id"],
        "get_weather",
        {"city": "Paris"},
    )
    sent = sent_upstream(upstream, f"tool-marker-{transport}")
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == "required"

    marker = f"18 C ({transport})"
    answer = await client.messages.create(
        model=transport,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": called.content},  # sent back as it came
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": marker}],
            },
        ],
    )
    assert answer.content[0].type == "text"
    history = sent_upstream(upstream, marker)["messages"]
    # litellm leaves out the assistant turn's empty content; the direct client sends it null.
    assert [{k: v for k, v in m.items() if v is not None} for m in history[1:]] == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": TOOL_CALL["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": TOOL_CALL["id"], "content": marker},
    ]


@TRANSPORTS
async def test_a_streamed_tool_call_arrives_as_input_json_deltas(
    gw: InProcessGateway, transport: str
) -> None:
    async with sdk(gw).messages.stream(
        model=f"{transport}-tool", max_tokens=64, messages=user("Weather?"), tools=[WEATHER_TOOL]
    ) as stream:
        partials = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert "".join(partials) == TOOL_CALL["arguments"] and len(partials) == 2
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"city": "Paris"}
    assert block.id == TOOL_CALL["id"] and final.stop_reason == "tool_use"


async def test_image_blocks_go_upstream_as_image_url_parts(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await sdk(gw).messages.create(
        model="direct",
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
                    {"type": "text", "text": "image-marker: what is shown?"},
                ],
            }
        ],
    )
    parts = sent_upstream(upstream, "image-marker")["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
        {"type": "text", "text": "image-marker: what is shown?"},
    ]


async def test_the_key_is_taken_from_x_api_key(gw: InProcessGateway) -> None:
    body = {"model": "direct", "max_tokens": 8, "messages": user("hi")}
    headers = {"x-api-key": gw.key, "anthropic-version": "2023-06-01"}
    accepted = await gw.client.post("/v1/messages", json=body, headers=headers)
    assert accepted.status_code == 200, accepted.text
    # anthropic-version is accepted, not required.
    plain = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": gw.key})
    assert plain.status_code == 200


async def test_a_wrong_key_is_an_sdk_authentication_error(gw: InProcessGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await sdk(gw, api_key="rs-wrong").messages.create(
            model="direct", max_tokens=8, messages=user("hi")
        )
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"


async def test_one_team_budget_covers_both_apis_and_its_429_is_an_sdk_rate_limit_error(
    gw: InProcessGateway,
) -> None:
    budget = {"team": "search", "period": "daily", "limit_usd": "0.00001"}
    put = await gw.client.put("/admin/budgets", json=budget, headers=gw.admin.headers)
    assert put.status_code in (200, 201), put.text
    # The OpenAI endpoint spends the budget's last stretch; the Anthropic one finds none left.
    chat = {"model": "direct", "messages": user("hi")}
    assert (await gw.client.post("/v1/chat/completions", json=chat, headers=gw.auth)).is_success
    with pytest.raises(anthropic.RateLimitError) as caught:
        await sdk(gw).messages.create(model="direct", max_tokens=8, messages=user("hi"))
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
    assert "daily" in body["error"]["message"] and body["error"]["budget"]["period"] == "daily"
    row = await gw.admin.spend(caught.value.response.headers["x-request-id"])
    assert (row["status"], row["error_type"]) == (429, "budget_exceeded")


async def test_auto_is_routed_with_the_rightsize_headers(gw: InProcessGateway) -> None:
    raw = await sdk(gw).messages.with_raw_response.create(
        model="auto", max_tokens=16, messages=user("Translate 'hello' to French.")
    )
    message = await raw.parse()
    assert message.content[0].type == "text"
    assert raw.headers["x-rightsize-model"] == "direct"  # the default tier's deployment
    assert raw.headers["x-rightsize-tier"] == "standard"
    assert 0 <= float(raw.headers["x-rightsize-demand"]) <= 1
    p50, p90 = map(int, raw.headers["x-rightsize-token-budget"].split("/"))
    assert 0 < p50 <= p90
    assert raw.headers["x-rightsize-cache"] == "miss"


async def test_the_spend_row_has_the_answers_tokens_and_cost(gw: InProcessGateway) -> None:
    raw = await sdk(gw).messages.with_raw_response.create(
        model="direct", max_tokens=16, messages=user("Spend.")
    )
    row = await gw.admin.spend(raw.headers["x-request-id"])
    assert (row["status"], row["deployment"], row["requested_model"]) == (200, "direct", "direct")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    expected = (
        PROMPT_TOKENS * Decimal(PRICE_DIRECT["input_per_mtok"])
        + COMPLETION_TOKENS * Decimal(PRICE_DIRECT["output_per_mtok"])
    ) / 1_000_000
    assert Decimal(row["cost_usd"]) == expected == Decimal(raw.headers["x-rightsize-cost-usd"])


async def test_a_streamed_message_is_logged_with_its_tokens(gw: InProcessGateway) -> None:
    async with sdk(gw).messages.stream(
        model="direct", max_tokens=16, messages=user("Stream spend.")
    ) as stream:
        await stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    row = await gw.admin.spend(request_id)
    assert (row["status"], row["stream"]) == (200, True)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)


async def test_count_tokens_counts_with_the_pinned_models_tokenizer(gw: InProcessGateway) -> None:
    client = sdk(gw)
    messages = user("How many tokens is this sentence?")
    counted = await client.messages.count_tokens(model="direct", messages=messages)
    with_system = await client.messages.count_tokens(
        model="direct", system="You are a careful assistant.", messages=messages
    )
    assert counted.input_tokens == chat_tokens("openai/fake-ok", messages)
    assert with_system.input_tokens > counted.input_tokens


async def test_count_tokens_for_auto_is_the_routers_count(gw: InProcessGateway) -> None:
    messages = user("How many tokens is this sentence?")
    counted = await sdk(gw).messages.count_tokens(model="auto", messages=messages)
    assert counted.input_tokens == prompt_tokens(messages)


async def test_count_tokens_of_an_unknown_model_is_not_found(gw: InProcessGateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await sdk(gw).messages.count_tokens(model="nope", messages=user("hi"))
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": "direct", "messages": user("hi")}, "max_tokens"),
        ({"model": "direct", "max_tokens": 8, "messages": []}, "messages"),
        (
            {
                "model": "direct",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
            },
            "messages.0.content",
        ),
        ({"model": "direct", "max_tokens": 8, "messages": user("hi"), "top_k": 5}, "top_k"),
        ({"model": "direct", "max_tokens": 8, "messages": user("hi"), "nope": 1}, "nope"),
        # Found by schemathesis: a non-list `tools` was iterated before the schema saw it (500).
        ({"model": "direct", "max_tokens": 8, "messages": user("hi"), "tools": True}, "tools"),
        (
            {
                "model": "direct",
                "max_tokens": 8,
                "messages": user("hi"),
                "thinking": {"type": "enabled", "budget_tokens": 2000},
            },
            "thinking",
        ),
    ],
)
async def test_a_malformed_request_is_an_anthropic_400_naming_the_field(
    gw: InProcessGateway, body: dict[str, Any], named: str
) -> None:
    response = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": gw.key})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(named)


async def test_an_upstream_failure_mid_stream_is_an_error_event(gw: InProcessGateway) -> None:
    stream = await sdk(gw).messages.create(
        model="direct-midstream", max_tokens=16, messages=user("break"), stream=True
    )
    kinds: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for event in stream:
            kinds.append(event.type)
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "api_error"


async def test_a_repeated_message_is_answered_from_the_prompt_cache_in_both_modes(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    async with cached_gateway("memory", upstream, tmp_path) as cached:
        client = sdk(cached)
        ask = {"model": "direct", "max_tokens": 32, "messages": user("cache-marker: capital?")}
        deterministic = {"temperature": 0}
        first = await client.messages.with_raw_response.create(**ask, extra_body=deterministic)
        before = len(upstream.fake.requests)
        again = await client.messages.with_raw_response.create(**ask, extra_body=deterministic)
        assert again.headers["x-rightsize-cache"] == "hit"
        answer = await again.parse()
        assert [b.text for b in answer.content if b.type == "text"] == [ANSWER]
        assert answer.usage.output_tokens == COMPLETION_TOKENS
        # The stored answer replayed as a stream: the same events the SDK parses.
        async with client.messages.stream(**ask, extra_body=deterministic) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
            assert stream.response.headers["x-rightsize-cache"] == "hit"
        text = "".join(e.text for e in events if e.type == "text")
        # A stored answer knows its usage: message_start reports the real count at once.
        assert [e.message.usage.input_tokens for e in events if e.type == "message_start"] == [
            PROMPT_TOKENS
        ]
        assert text == ANSWER and final.stop_reason == "end_turn"
        assert len(upstream.fake.requests) == before
        assert first.headers["x-rightsize-cache"] == "miss"


async def test_an_untranslatable_field_sent_as_null_asks_for_nothing(gw: InProcessGateway) -> None:
    body = {"model": "direct", "max_tokens": 8, "messages": user("hi"), "top_k": None}
    response = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": gw.key})
    assert response.status_code == 200, response.text
