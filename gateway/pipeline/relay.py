"""Relay: an open upstream stream forwarded chunk by chunk, then metered and settled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any, Final

import anyio

from gateway.cache import CacheLookup, StreamAssembler
from gateway.errors import GatewayError
from gateway.native import NATIVE
from gateway.pipeline.attempts import OpenStream
from gateway.pipeline.call import Call, charge, finish, usage_payload, usd
from gateway.pipeline.shadowing import offer_shadow
from gateway.schemas import ChatRequest
from gateway.state import Gateway
from gateway.usage import completion_text, count_usage, usage_from
from policies import Deployment, Usage


class StreamEnd:
    """The end of a successful stream (OpenAI's `[DONE]`)."""


END: Final = StreamEnd()

StreamEvent = dict[str, Any] | GatewayError | StreamEnd
"""What a relay yields: a chunk, an error after the first byte, or the end."""


async def relay(
    gateway: Gateway,
    call: Call,
    chat: ChatRequest,
    deployment: Deployment,
    opened: OpenStream,
    cached: CacheLookup,
) -> AsyncGenerator[StreamEvent, None]:
    """Forward chunks; end with our own usage chunk (with cost) when the client asked for it.

    Whatever happens (an upstream error, the client hanging up), the upstream is closed and
    the spend row written and settled with what was produced, in a shielded scope.
    """
    upstream = opened.rest
    assembler = StreamAssembler() if cached.write else None
    completion: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    text: list[str] = []
    last = opened.first
    chunk: dict[str, Any] | None = opened.first
    try:
        while chunk is not None:
            if chunk.get("usage"):
                reported = chunk.pop("usage")
            else:
                chunk.pop("usage", None)
            for choice in chunk.get("choices") or ():
                text.append(completion_text(choice.get("delta") or {}))
            if chunk.get("choices"):
                last = chunk
                if assembler is not None:
                    assembler.add(chunk)
                yield chunk
            elif NATIVE in chunk:
                yield chunk  # an event of the client's API with no chat-completion content
            waited = time.perf_counter()
            chunk = await anext(upstream, None)
            call.record.upstream_ms = (call.record.upstream_ms or 0) + (
                time.perf_counter() - waited
            ) * 1000
        usage = await _final_usage(call, deployment.model, chat, reported, text)
        cost = charge(call, gateway.local_cost.cost(deployment, usage, call.record), usage)
        if chat.wants_usage_chunk():
            yield {
                "id": last.get("id"),
                "object": "chat.completion.chunk",
                "created": last.get("created"),
                "model": last.get("model"),
                "choices": [],
                "usage": {**usage_payload(usage), "cost_usd": usd(cost)},
            }
        yield END
        if assembler is not None:
            completion = assembler.completion(usage_payload(usage))
    except GatewayError as exc:
        # Bytes are already with the client: the error can only travel as an event.
        call.record.status, call.record.error_type = exc.status, exc.code or exc.type
        yield exc
    except BaseException:
        call.record.status, call.record.error_type = 499, "client_closed"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()  # type: ignore[attr-defined]
            if call.record.status != 200:
                usage = await _final_usage(call, deployment.model, chat, reported, text)
                charge(call, gateway.local_cost.cost(deployment, usage, call.record), usage)
            await finish(gateway, call)
    if completion is not None and call.record.status == 200:
        # After the end has gone out: the client does not wait for the cache.
        await gateway.cache.store(cached, deployment.name, completion)
    if call.record.status == 200 and gateway.shadow is not None:
        offer_shadow(gateway, call, chat.upstream_payload(), "".join(text))


async def _final_usage(
    call: Call,
    model: str,
    chat: ChatRequest,
    reported: dict[str, Any] | None,
    text: list[str],
) -> Usage:
    usage = usage_from(reported)
    if usage is None:
        messages = chat.upstream_payload()["messages"]
        usage = await asyncio.to_thread(count_usage, model, messages, "".join(text))
        call.record.usage_estimated = True
    return usage
