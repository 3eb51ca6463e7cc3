"""The official anthropic SDK against a live gateway (in process), served once by an Anthropic-
format upstream (fake, over HTTP: the request goes as it came) and once by an OpenAI-format one
(the fake OpenAI upstream: a faithful translation), with the same spend-row fields either way."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from gateway.anthropic.upstream import openai_usage
from gateway.llm import litellm, model_info
from gateway.tokens import chat_tokens
from gateway.usage import usage_from
from tests.cache_support import cache_section
from tests.conftest import (
    PRICE_DIRECT,
    InProcessGateway,
    gateway_config,
    gateway_env,
    in_process_gateway,
)
from tests.fake_anthropic import CACHE_USAGE, SIGNATURE, THINKING, RunningAnthropic
from tests.fake_upstream import (
    ANSWER,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    TOOL_CALL,
    RunningUpstream,
)
from tests.test_anthropic_messages import PNG, WEATHER_TOOL, user

ANTHROPIC_KEY = "sk-fake-anthropic"
# The same question of each kind of upstream: the Anthropic-format deployment, the OpenAI one.
SERVED_BY = pytest.mark.parametrize("model", ["claude", "direct"])


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[RunningAnthropic]:
    with RunningAnthropic() as running:
        yield running


def config(store_url: str, upstream: RunningUpstream, fake: RunningAnthropic) -> dict[str, Any]:
    base = gateway_config(store_url, upstream)

    def claude(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "model": model,
            "api_base": fake.base_url,
            "api_key_env": "FAKE_ANTHROPIC_KEY",
            "price": PRICE_DIRECT,
            **extra,
        }

    base["models"] += [
        # An `anthropic/` model through the default transport: native for /v1/messages.
        claude("claude", "anthropic/claude-fake-ok"),
        claude("claude-tool", "anthropic/claude-fake-tool"),
        claude("claude-thinking", "anthropic/claude-fake-thinking"),
        claude("claude-500", "anthropic/claude-fake-500"),
        claude("claude-400", "anthropic/claude-fake-400"),
        claude("claude-midstream", "anthropic/claude-fake-midstream"),
        # Nothing listens there: an unreachable Anthropic upstream.
        {**claude("claude-down", "anthropic/claude-fake-ok"), "api_base": "http://127.0.0.1:9"},
        # The `anthropic` transport, the model id as Anthropic names it.
        claude("claude-native", "claude-fake-ok", transport="anthropic"),
        # A real model's id: priced from litellm's map (no price given).
        {**claude("sonnet", "anthropic/claude-sonnet-4-5"), "price": None},
        {
            "name": "direct-tool",
            "model": "openai/fake-tool",
            "api_base": upstream.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "price": PRICE_DIRECT,
        },
    ]
    base["models"] = [{k: v for k, v in m.items() if v is not None} for m in base["models"]]
    return base


@pytest.fixture
async def gw(
    store_url: str, upstream: RunningUpstream, anthropic_upstream: RunningAnthropic
) -> AsyncIterator[InProcessGateway]:
    env = gateway_env(FAKE_ANTHROPIC_KEY=ANTHROPIC_KEY)
    async with in_process_gateway(config(store_url, upstream, anthropic_upstream), env) as gw:
        yield gw


def sdk(gw: InProcessGateway) -> anthropic.AsyncAnthropic:
    transport = httpx2.ASGITransport(app=gw.app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway")
    return anthropic.AsyncAnthropic(
        base_url="http://gateway", api_key=gw.key, http_client=http, max_retries=0
    )


def sent_to_anthropic(fake: RunningAnthropic, marker: str) -> dict[str, Any]:
    """The last request the fake Anthropic upstream received that mentions `marker`."""
    for request in reversed(fake.fake.requests):
        if marker in orjson.dumps(request["body"]).decode():
            return request
    raise AssertionError(f"no Anthropic upstream request mentions {marker!r}")


# What the spend log says of a request, whichever kind of upstream served it.
ROW_FIELDS = (
    "status",
    "api",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "cost_usd",
    "usage_estimated",
    "cache_hit",
    "attempts",
)


def direct_cost(prompt: int, completion: int) -> Decimal:
    return (
        prompt * Decimal(PRICE_DIRECT["input_per_mtok"])
        + completion * Decimal(PRICE_DIRECT["output_per_mtok"])
    ) / 1_000_000


@SERVED_BY
async def test_a_message(gw: InProcessGateway, model: str) -> None:
    raw = await sdk(gw).messages.with_raw_response.create(
        model=model, max_tokens=64, messages=user(f"Say hello. ({model})")
    )
    message = await raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", ANSWER)]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert raw.headers["x-rightsize-model"] == model
    assert Decimal(raw.headers["x-rightsize-cost-usd"]) == direct_cost(
        PROMPT_TOKENS, COMPLETION_TOKENS
    )


@SERVED_BY
async def test_a_streamed_message_whose_text_deltas_reassemble_exactly(
    gw: InProcessGateway, model: str
) -> None:
    async with sdk(gw).messages.stream(
        model=model, max_tokens=64, messages=user(f"Stream, please. ({model})")
    ) as stream:
        deltas = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert len(deltas) == len(ANSWER.split(" ")) and "".join(deltas) == ANSWER
    assert [b.text for b in final.content if b.type == "text"] == [ANSWER]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == COMPLETION_TOKENS


@SERVED_BY
async def test_a_tool_use_round_trip(gw: InProcessGateway, model: str) -> None:
    client = sdk(gw)
    question = user(f"What is the weather in Paris? ({model})")
    called = await client.messages.create(
        model=f"{model}-tool", max_tokens=64, messages=question, tools=[WEATHER_TOOL]
    )
    assert called.stop_reason == "tool_use"
    [block] = called.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == (TOOL_CALL["name"], {"city": "Paris"})
    answer = await client.messages.create(
        model=f"{model}-tool",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": called.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18 C"}],
            },
        ],
    )
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [("text", ANSWER)]
    assert answer.stop_reason == "end_turn"


@SERVED_BY
async def test_a_streamed_tool_call_arrives_as_input_json_deltas(
    gw: InProcessGateway, model: str
) -> None:
    async with sdk(gw).messages.stream(
        model=f"{model}-tool", max_tokens=64, messages=user("Weather?"), tools=[WEATHER_TOOL]
    ) as stream:
        partials = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    assert "".join(partials) == TOOL_CALL["arguments"] and len(partials) == 2
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


@SERVED_BY
async def test_an_image_block(gw: InProcessGateway, model: str) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": PNG}
    message = await sdk(gw).messages.create(
        model=model,
        max_tokens=16,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": image},
                    {"type": "text", "text": f"What is shown? ({model})"},
                ],
            }
        ],
    )
    assert [b.text for b in message.content if b.type == "text"] == [ANSWER]


@SERVED_BY
async def test_count_tokens(gw: InProcessGateway, model: str) -> None:
    counted = await sdk(gw).messages.count_tokens(model=model, messages=user("Count me."))
    assert counted.input_tokens > 0


async def test_count_tokens_of_an_anthropic_format_deployment_is_the_upstreams_own(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic
) -> None:
    messages = user("count-marker: how many?")
    counted = await sdk(gw).messages.count_tokens(model="claude", messages=messages)
    # The fake counts the messages' JSON length: a number only it gives.
    assert counted.input_tokens == len(orjson.dumps(messages))
    sent = sent_to_anthropic(anthropic_upstream, "count-marker")
    assert sent["path"] == "/v1/messages/count_tokens"
    assert sent["body"]["model"] == "claude-fake-ok"


async def test_the_spend_row_has_the_same_fields_either_way(gw: InProcessGateway) -> None:
    rows: dict[tuple[str, bool], dict[str, Any]] = {}
    for model in ("claude", "direct"):
        for stream in (False, True):
            async with sdk(gw).messages.with_streaming_response.create(
                model=model, max_tokens=16, messages=user("Spend."), stream=stream
            ) as raw:
                await raw.read()
                request_id = raw.headers["x-request-id"]
            rows[(model, stream)] = await gw.admin.spend(request_id)
    for stream in (False, True):
        native, translated = rows[("claude", stream)], rows[("direct", stream)]
        assert {f: native[f] for f in ROW_FIELDS} == {f: translated[f] for f in ROW_FIELDS}
        assert (native["deployment"], translated["deployment"]) == ("claude", "direct")
    row = rows[("claude", False)]
    assert (row["api"], row["prompt_tokens"], row["completion_tokens"]) == (
        "anthropic",
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert Decimal(row["cost_usd"]) == direct_cost(PROMPT_TOKENS, COMPLETION_TOKENS)


async def test_an_anthropic_request_goes_upstream_as_it_came(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic
) -> None:
    body = {
        "model": "claude-native",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": user("as-is-marker"),
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "stop_sequences": ["END"],
    }
    headers = {
        "x-api-key": gw.key,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
    }
    response = await gw.client.post("/v1/messages", json=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = sent_to_anthropic(anthropic_upstream, "as-is-marker")
    assert sent["body"] == {**body, "model": "claude-fake-ok", "stream": False}
    # The deployment's key, never the client's; the client's version and beta flags.
    assert sent["headers"] == {
        "x-api-key": ANTHROPIC_KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "authorization": None,
    }
    # The answer is the upstream's message as it came (its id, its model).
    assert response.json()["id"] == "msg_fake_1"


async def test_the_stream_is_relayed_event_by_event(gw: InProcessGateway) -> None:
    body = {"model": "claude", "max_tokens": 64, "messages": user("events"), "stream": True}
    response = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": gw.key})
    assert response.status_code == 200, response.text
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    words = len(ANSWER.split(" "))
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * words,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert '"id":"msg_fake_1"' in response.text  # the upstream's own message_start


async def test_thinking_blocks_come_back_with_their_signature(gw: InProcessGateway) -> None:
    client = sdk(gw)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = await client.messages.create(
        model="claude-thinking", max_tokens=2048, messages=user("Hi"), thinking=thinking
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    block = message.content[0]
    assert block.type == "thinking"
    assert (block.thinking, block.signature) == (THINKING, SIGNATURE)
    async with client.messages.stream(
        model="claude-thinking", max_tokens=2048, messages=user("Hi"), thinking=thinking
    ) as stream:
        final = await stream.get_final_message()
    streamed = final.content[0]
    assert streamed.type == "thinking"
    assert (streamed.thinking, streamed.signature) == (THINKING, SIGNATURE)


async def test_thinking_for_an_openai_format_deployment_is_a_400_naming_both(
    gw: InProcessGateway,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(gw).messages.create(
            model="direct",
            max_tokens=2048,
            messages=user("Hi"),
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("thinking:") and "'direct'" in message


@pytest.mark.parametrize(
    ("model", "status", "error"),
    [("claude-400", 400, anthropic.BadRequestError), ("claude-500", 502, anthropic.APIStatusError)],
)
async def test_an_upstream_error_is_an_anthropic_error(
    gw: InProcessGateway, model: str, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        await sdk(gw).messages.create(model=model, max_tokens=8, messages=user("Hi"))
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    body = caught.value.body  # type: ignore[attr-defined]
    assert body["type"] == "error" and "fake Anthropic upstream" in body["error"]["message"]


async def test_a_chat_completion_reaches_an_anthropic_deployment_through_litellm(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic
) -> None:
    transport = httpx2.ASGITransport(app=gw.app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway")
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=http, max_retries=0
    )
    for model in ("claude", "claude-native"):
        raw = await client.chat.completions.with_raw_response.create(
            model=model,
            max_tokens=32,
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": f"openai-marker {model}"},
            ],
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == ANSWER
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
            PROMPT_TOKENS,
            COMPLETION_TOKENS,
        )
        sent = sent_to_anthropic(anthropic_upstream, f"openai-marker {model}")
        assert sent["path"] == "/v1/messages" and sent["headers"]["x-api-key"] == ANTHROPIC_KEY
        assert sent["body"]["model"] == "claude-fake-ok" and sent["body"]["max_tokens"] == 32
        assert sent["body"]["system"] == [{"type": "text", "text": "Be terse."}]
        row = await gw.admin.spend(raw.headers["x-request-id"])
        assert (row["api"], row["deployment"]) == ("openai", model)


def sonnet_cost(usage: dict[str, Any]) -> Decimal:
    """The cost of CACHE_USAGE from litellm's published prices, exactly as written there."""
    entry = litellm().model_cost["claude-sonnet-4-5"]

    def price(name: str) -> Decimal:
        return Decimal(repr(entry[name]))

    written = usage["cache_creation"]
    return (
        usage["input_tokens"] * price("input_cost_per_token")
        + usage["cache_read_input_tokens"] * price("cache_read_input_token_cost")
        + written["ephemeral_5m_input_tokens"] * price("cache_creation_input_token_cost")
        + written["ephemeral_1h_input_tokens"] * price("cache_creation_input_token_cost_above_1hr")
        + usage["output_tokens"] * price("output_cost_per_token")
    )


def test_cache_reads_and_writes_are_priced_as_litellm_prices_them() -> None:
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    info = model_info("anthropic/claude-sonnet-4-5")
    assert info is not None and info.price is not None
    usage = usage_from(openai_usage(CACHE_USAGE))
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_creation_tokens) == (145, 100, 40)
    ours = info.price.cost(usage)
    assert ours == sonnet_cost(CACHE_USAGE) == Decimal("0.0003225")
    # litellm's own computation (in floats) of the same usage, as it parses Anthropic's.
    parsed = AnthropicConfig().calculate_usage(dict(CACHE_USAGE), reasoning_content=None)
    prompt, completion = litellm().cost_per_token(
        model="anthropic/claude-sonnet-4-5", usage_object=parsed, custom_llm_provider="anthropic"
    )
    assert math.isclose(float(ours), prompt + completion, rel_tol=1e-12)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_request_with_cache_reads_and_writes_costs_litellms_prices_exactly(
    gw: InProcessGateway, stream: bool
) -> None:
    async with sdk(gw).messages.with_streaming_response.create(
        model="sonnet", max_tokens=16, messages=user("Cached prompt."), stream=stream
    ) as raw:
        await raw.read()
        request_id = raw.headers["x-request-id"]
        if not stream:
            # The client sees the upstream's usage as it came.
            assert orjson.loads(await raw.read())["usage"] == CACHE_USAGE
            assert Decimal(raw.headers["x-rightsize-cost-usd"]) == sonnet_cost(CACHE_USAGE)
    row = await gw.admin.spend(request_id)
    assert Decimal(row["cost_usd"]) == sonnet_cost(CACHE_USAGE)
    assert (row["prompt_tokens"], row["cached_tokens"], row["cache_creation_tokens"]) == (
        145,
        100,
        40,
    )


async def test_a_chat_completion_with_anthropic_cache_writes_costs_the_same_through_litellm(
    gw: InProcessGateway,
) -> None:
    response = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "sonnet", "max_tokens": 16, "messages": user("Cached prompt.")},
        headers=gw.auth,
    )
    assert response.status_code == 200, response.text
    row = await gw.admin.spend(response.headers["x-request-id"])
    assert Decimal(row["cost_usd"]) == sonnet_cost(CACHE_USAGE)
    assert (row["cached_tokens"], row["cache_creation_tokens"]) == (100, 40)


async def test_the_prompt_cache_keeps_apart_requests_differing_in_anthropic_only_fields(
    tmp_path: Path, upstream: RunningUpstream, anthropic_upstream: RunningAnthropic
) -> None:
    settings = config(f"sqlite:///{tmp_path / 'gw.db'}", upstream, anthropic_upstream)
    settings["cache"] = cache_section(backend="memory")
    env = gateway_env(FAKE_ANTHROPIC_KEY=ANTHROPIC_KEY)
    async with in_process_gateway(settings, env) as cached:
        body = {"model": "claude", "max_tokens": 16, "messages": user("cache-variant")}
        body["temperature"] = 0
        headers = {"x-api-key": cached.key}

        async def ask(top_k: int) -> str:
            response = await cached.client.post(
                "/v1/messages", json={**body, "top_k": top_k}, headers=headers
            )
            assert response.status_code == 200, response.text
            assert [b["text"] for b in response.json()["content"]] == [ANSWER]
            return response.headers["x-rightsize-cache"]

        # top_k is not in the translation the cache keys on: it is keyed apart all the same.
        assert [await ask(5), await ask(6), await ask(5)] == ["miss", "miss", "hit"]


def openai_sdk(gw: InProcessGateway) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=gw.app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway")
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=http, max_retries=0
    )


async def test_a_streamed_chat_completion_from_an_anthropic_deployment_reassembles_exactly(
    gw: InProcessGateway,
) -> None:
    stream = await openai_sdk(gw).chat.completions.create(
        model="claude",
        max_tokens=32,
        messages=[{"role": "user", "content": "openai-stream"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    async for chunk in stream:
        pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        usage = chunk.usage or usage
    assert "".join(pieces) == ANSWER
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


async def test_a_chat_completion_tool_round_trip_with_an_anthropic_deployment(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic
) -> None:
    client = openai_sdk(gw)
    tool = {
        "type": "function",
        "function": {
            "name": WEATHER_TOOL["name"],
            "description": WEATHER_TOOL["description"],
            "parameters": WEATHER_TOOL["input_schema"],
        },
    }
    question = {"role": "user", "content": "openai-tool-marker: weather in Paris?"}
    called = await client.chat.completions.create(
        model="claude-tool", max_tokens=32, messages=[question], tools=[tool]
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert (call.id, call.function.name) == ("toolu_fake_1", TOOL_CALL["name"])
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    sent = sent_to_anthropic(anthropic_upstream, "openai-tool-marker")["body"]
    assert sent["tools"] == [{**WEATHER_TOOL, "type": "custom"}]  # litellm names the type
    answer = await client.chat.completions.create(
        model="claude-tool",
        max_tokens=32,
        tools=[tool],
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "18 C openai-result"},
        ],
    )
    assert answer.choices[0].message.content == ANSWER
    history = sent_to_anthropic(anthropic_upstream, "openai-result")["body"]["messages"]
    assert history[1]["role"] == "assistant"
    assert [b["type"] for b in history[1]["content"]] == ["tool_use"]
    assert history[2]["role"] == "user"
    result = history[2]["content"][0]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", "toolu_fake_1")


async def test_an_upstream_error_event_mid_stream_is_relayed_as_an_error_event(
    gw: InProcessGateway,
) -> None:
    stream = await sdk(gw).messages.create(
        model="claude-midstream", max_tokens=16, messages=user("break"), stream=True
    )
    kinds: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for event in stream:
            kinds.append(event.type)
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "overloaded" in body["error"]["message"]
    request_id = stream.response.headers["x-request-id"]
    row = await gw.admin.spend(request_id)
    assert (row["status"], row["error_type"], row["api"]) == (
        502,
        "upstream_stream_error",
        "anthropic",
    )


async def test_count_tokens_falls_back_to_the_tokenizer_when_the_upstream_is_down(
    gw: InProcessGateway,
) -> None:
    messages = user("Count me while the upstream is down.")
    counted = await sdk(gw).messages.count_tokens(model="claude-down", messages=messages)
    assert counted.input_tokens == chat_tokens("anthropic/claude-fake-ok", messages)
