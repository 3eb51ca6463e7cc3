"""The direct transport (gateway/providers/openai_http.py) against the fake upstream on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import UpstreamBadRequest, UpstreamError, UpstreamTimeout
from gateway.providers import OpenAIHTTPProvider
from policies import Capabilities, Deployment, TokenPrice
from tests.fake_upstream import (
    ANSWER,
    BIG_CHUNK_CHARS,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    STEADY_CHUNKS,
    STEADY_GAP_S,
    RunningUpstream,
    free_port,
)

KEY = "sk-direct-transport"
PRICE = TokenPrice(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.0000005"))
HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}


def deployment(upstream_id: str, base: str, timeout_s: float = 5.0) -> Deployment:
    return Deployment(
        upstream_id,
        f"openai/{upstream_id}",
        base,
        "FAKE_UPSTREAM_KEY",
        None,
        "openai_http",
        timeout_s,
        PRICE,
        Capabilities(),
        False,
    )


@pytest.fixture
async def provider(upstream: RunningUpstream) -> AsyncIterator[OpenAIHTTPProvider]:
    names = ["fake-ok", "fake-400", "fake-500", "fake-echo", "fake-bigchunk", "fake-midstream"]
    transport = OpenAIHTTPProvider({name: KEY for name in names})
    yield transport
    await transport.aclose()


async def chunks(
    provider: OpenAIHTTPProvider, deployment: Deployment, payload: dict[str, Any] = HELLO
) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream(deployment, payload)]


def text(received: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in received for choice in chunk["choices"]
    )


async def test_plain_call_sends_the_upstream_model_id_and_the_key(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    answer = await provider.complete(deployment("fake-ok", upstream.base_url), HELLO)
    assert answer["choices"][0]["message"]["content"] == ANSWER
    assert answer["usage"]["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    sent = upstream.fake.requests[-1]
    assert sent["body"] == {**HELLO, "stream": False, "model": "fake-ok"}
    assert sent["auth"] == f"Bearer {KEY}"


async def test_stream_asks_for_usage_and_ends_at_done(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    payload = {**HELLO, "stream_options": {"include_usage": False}}
    received = await chunks(provider, deployment("fake-ok", upstream.base_url), payload)
    assert text(received) == ANSWER
    assert received[-1]["usage"]["completion_tokens"] == COMPLETION_TOKENS
    sent = upstream.fake.requests[-1]["body"]
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})


async def test_a_chunk_line_far_over_the_read_buffer_arrives_whole(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    received = await chunks(provider, deployment("fake-bigchunk", upstream.base_url))
    assert text(received) == "x" * BIG_CHUNK_CHARS
    assert "usage" in received[-1]


async def test_crlf_lines_and_a_last_line_without_newline_are_parsed(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    received = await chunks(provider, deployment("fake-crlf", upstream.base_url))
    assert text(received) == "Hello"


async def test_a_data_line_that_is_not_json_breaks_the_stream(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="the stream broke off"):
        async for chunk in provider.stream(deployment("fake-garbled", upstream.base_url), HELLO):
            received.append(chunk)
    assert text(received) == "Hel"


async def test_a_slow_but_steady_stream_outlasting_the_timeout_succeeds(
    upstream: RunningUpstream,
) -> None:
    timeout_s = STEADY_GAP_S * 4  # each gap well inside it, the whole stream twice as long
    provider = OpenAIHTTPProvider({})
    try:
        started = time.monotonic()
        received = await chunks(provider, deployment("fake-steady", upstream.base_url, timeout_s))
        elapsed = time.monotonic() - started
    finally:
        await provider.aclose()
    assert text(received) == "".join(f" w{i}" for i in range(STEADY_CHUNKS)).lstrip()
    assert elapsed > timeout_s * 1.5, "the stream must have outlasted the timeout"


async def test_a_stalled_stream_times_out_after_timeout_s(upstream: RunningUpstream) -> None:
    provider = OpenAIHTTPProvider({})
    received: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.4s"):
            async for chunk in provider.stream(
                deployment("fake-stall", upstream.base_url, 0.4), HELLO
            ):
                received.append(chunk)
    finally:
        await provider.aclose()
    assert 0.4 <= time.monotonic() - started < 2.5  # the fake stalls for 3 s
    assert text(received) == "Hello", "what came before the stall was passed on"


async def test_a_plain_call_slower_than_timeout_s_times_out(upstream: RunningUpstream) -> None:
    provider = OpenAIHTTPProvider({})
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout):
            await provider.complete(deployment("fake-slow", upstream.base_url, 0.4), HELLO)
    finally:
        await provider.aclose()
    assert time.monotonic() - started < 2.5  # the fake answers after 3 s


async def test_a_stream_waiting_longer_than_timeout_s_for_its_first_byte_times_out(
    upstream: RunningUpstream,
) -> None:
    provider = OpenAIHTTPProvider({})
    try:
        with pytest.raises(UpstreamTimeout):
            await chunks(provider, deployment("fake-slow", upstream.base_url, 0.4))
    finally:
        await provider.aclose()


async def test_upstream_closing_the_connection_mid_stream_is_an_upstream_error(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError, match="the stream broke off") as raised:
        async for chunk in provider.stream(deployment("fake-midstream", upstream.base_url), HELLO):
            received.append(chunk)
    assert not isinstance(raised.value, UpstreamTimeout)
    assert text(received).startswith("Hello from")


@pytest.mark.parametrize("stream", [False, True])
async def test_refused_connection_is_an_upstream_error(stream: bool) -> None:
    provider = OpenAIHTTPProvider({})
    dead = deployment("fake-ok", f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamError, match="connection failed") as raised:
            if stream:
                await chunks(provider, dead)
            else:
                await provider.complete(dead, HELLO)
    finally:
        await provider.aclose()
    assert type(raised.value) is UpstreamError


@pytest.mark.parametrize("stream", [False, True])
async def test_status_400_is_a_bad_request_and_500_an_upstream_error(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream, stream: bool
) -> None:
    for upstream_id, kind, words in (
        ("fake-400", UpstreamBadRequest, "rejects this request"),
        ("fake-500", UpstreamError, "fell over"),
    ):
        target = deployment(upstream_id, upstream.base_url)
        with pytest.raises(UpstreamError, match=words) as raised:
            if stream:
                await chunks(provider, target)
            else:
                await provider.complete(target, HELLO)
        assert type(raised.value) is kind


async def test_upstream_text_quoting_the_key_is_redacted(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    with pytest.raises(UpstreamError) as raised:
        await provider.complete(deployment("fake-echo", upstream.base_url), HELLO)
    assert upstream.fake.requests[-1]["auth"] == f"Bearer {KEY}"
    assert KEY not in str(raised.value)


async def test_a_stream_left_early_closes_its_connection_and_the_next_call_works(
    upstream: RunningUpstream,
) -> None:
    provider = OpenAIHTTPProvider({})
    try:
        stream = provider.stream(deployment("fake-steady", upstream.base_url), HELLO)
        assert "choices" in await anext(stream)
        await stream.aclose()  # as the pipeline does when its client goes away
        left = upstream.fake.requests[-1]["peer"]
        answer = await provider.complete(deployment("fake-ok", upstream.base_url), HELLO)
    finally:
        await provider.aclose()
    assert answer["choices"][0]["message"]["content"] == ANSWER
    # The half-read connection was not put back: its unread chunks would garble the next answer.
    assert upstream.fake.requests[-1]["peer"] != left


async def test_a_redirect_is_not_followed(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    first = len(upstream.fake.requests)
    with pytest.raises(UpstreamError, match="not JSON"):
        await provider.complete(deployment("fake-redirect", upstream.base_url), HELLO)
    assert len(upstream.fake.requests) - first == 1


@pytest.mark.parametrize("bypassed", [False, True])
async def test_proxy_variables_in_the_environment_are_honoured(
    upstream: RunningUpstream, monkeypatch: pytest.MonkeyPatch, bypassed: bool
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    if bypassed:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    provider = OpenAIHTTPProvider({})
    target = deployment("fake-ok", upstream.base_url)
    try:
        if bypassed:
            assert (await provider.complete(target, HELLO))["choices"]
        else:
            with pytest.raises(UpstreamError, match="connection failed"):
                await provider.complete(target, HELLO)
    finally:
        await provider.aclose()


async def test_a_deployment_without_api_base_is_an_upstream_error(
    provider: OpenAIHTTPProvider,
) -> None:
    with pytest.raises(UpstreamError, match="no api_base"):
        await provider.complete(deployment("fake-ok", ""), HELLO)


async def test_sequential_calls_reuse_one_kept_alive_connection(
    provider: OpenAIHTTPProvider, upstream: RunningUpstream
) -> None:
    # Plain calls only: a stream's connection goes back to the pool only when the body's end
    # arrived with its [DONE], which on loopback depends on the timing of two writes.
    target = deployment("fake-ok", upstream.base_url)
    first = len(upstream.fake.requests)
    for _ in range(6):
        await provider.complete(target, HELLO)
    peers = {sent["peer"] for sent in upstream.fake.requests[first:]}
    assert len(upstream.fake.requests) - first == 6
    assert len(peers) == 1, peers
