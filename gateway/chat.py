"""POST /v1/chat/completions: authenticate, validate, route, call upstream, meter, log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.auth import bearer_token
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RevokedKey,
    UpstreamError,
)
from gateway.http import SSE_DONE, error_response, json_response, read_json, request_id, sse
from gateway.ledger.ledger import Hold
from gateway.ledger.metering import reserve_request, settle_request
from gateway.schemas import ChatRequest
from gateway.state import Gateway
from gateway.store import ApiKey, SpendRecord
from gateway.usage import completion_text, count_usage, usage_from
from policies import Decision, RoutingRequest, UnknownModel, Usage

log = logging.getLogger("rightsize.chat")


@dataclass(slots=True)
class _Call:
    """One request in flight: what the spend log will say about it."""

    record: SpendRecord
    started: float = field(default_factory=time.perf_counter)
    hold: Hold | None = None  # the ledger's reservation, settled wherever the record is written

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    call = _Call(SpendRecord(request_id=request_id(request), created_at=_now(), status=200))
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        call.record.team, call.record.key_id = key.team, key.id
        chat = parse_chat_request(await read_json(request, gateway.settings.server.max_body_bytes))
        call.record.requested_model, call.record.stream = chat.model, bool(chat.stream)
        decision = _decide(gateway, key, chat)
        call.record.deployment, call.record.tier = decision.deployment.name, decision.tier
        call.hold = await reserve_request(
            gateway.ledger, key.team, key.id, chat, decision.deployment
        )
        if chat.stream:
            return await _stream(gateway, call, chat, decision)
        return await _complete(gateway, call, chat, decision)
    except RevokedKey as exc:
        call.record.team, call.record.key_id = exc.team, exc.key_id
        await _log_failure(gateway, call, exc)
        return error_response(exc, call.record.request_id)
    except GatewayError as exc:
        await _log_failure(gateway, call, exc)
        return error_response(exc, call.record.request_id)
    except Exception:
        log.exception("request %s failed inside the gateway", call.record.request_id)
        internal = GatewayError(f"Internal gateway error (request {call.record.request_id})")
        await _log_failure(gateway, call, internal)
        return error_response(internal, call.record.request_id)


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _dotted(error["loc"])
        raise InvalidRequest(f"Invalid value for {param!r}: {error['msg']}", param=param) from None


def _decide(gateway: Gateway, key: ApiKey, chat: ChatRequest) -> Decision:
    try:
        decision = gateway.policy.decide(RoutingRequest(model=chat.model))
    except UnknownModel as exc:
        raise NotFound(str(exc), param="model") from None
    if not key.may_use(chat.model, decision.deployment.name, decision.tier):
        raise PermissionDenied(f"This key may not use model {chat.model!r}", param="model")
    return decision


async def _complete(
    gateway: Gateway, call: _Call, chat: ChatRequest, decision: Decision
) -> Response:
    deployment = decision.deployment
    payload = chat.upstream_payload()
    upstream_started = time.perf_counter()
    try:
        result = await gateway.provider(deployment).complete(deployment, payload)
    finally:
        call.record.upstream_ms = (time.perf_counter() - upstream_started) * 1000
    usage = usage_from(result.get("usage"))
    if usage is None:
        text = "".join(completion_text(c.get("message") or {}) for c in result.get("choices") or ())
        usage = await asyncio.to_thread(count_usage, deployment.model, payload["messages"], text)
        result["usage"] = _usage_payload(usage)
        call.record.usage_estimated = True
    cost = _charge(call, deployment.price.cost(usage), usage)
    call.record.overhead_ms = call.elapsed_ms() - call.record.upstream_ms
    await settle_request(gateway.ledger, call.hold, call.record)
    gateway.spend.record(call.record)
    headers = _routing_headers(call, decision)
    headers["x-rightsize-cost-usd"] = _usd(cost)
    return json_response(result, headers=headers)


async def _stream(gateway: Gateway, call: _Call, chat: ChatRequest, decision: Decision) -> Response:
    deployment = decision.deployment
    payload = chat.upstream_payload()
    upstream = gateway.provider(deployment).stream(deployment, payload)
    upstream_started = time.perf_counter()
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        raise UpstreamError(deployment.name, "the stream ended before any chunk") from None
    except BaseException:
        await upstream.aclose()  # type: ignore[attr-defined]
        raise
    finally:
        call.record.upstream_ms = (time.perf_counter() - upstream_started) * 1000
    call.record.overhead_ms = call.elapsed_ms() - call.record.upstream_ms
    return StreamingResponse(
        _relay(gateway, call, chat, decision, first, upstream),
        media_type="text/event-stream",
        headers={**_routing_headers(call, decision), "cache-control": "no-cache"},
    )


async def _relay(
    gateway: Gateway,
    call: _Call,
    chat: ChatRequest,
    decision: Decision,
    first: dict[str, Any],
    upstream: AsyncIterator[dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Forward chunks; end with our own usage chunk (with cost) when the client asked for it."""
    deployment = decision.deployment
    reported: dict[str, Any] | None = None
    text: list[str] = []
    last = first
    chunk: dict[str, Any] | None = first
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
                yield sse(chunk)
            waited = time.perf_counter()
            chunk = await anext(upstream, None)
            call.record.upstream_ms = (call.record.upstream_ms or 0) + (
                time.perf_counter() - waited
            ) * 1000
        usage = await _final_usage(call, deployment.model, chat, reported, text)
        cost = _charge(call, deployment.price.cost(usage), usage)
        if chat.wants_usage_chunk():
            yield sse(
                {
                    "id": last.get("id"),
                    "object": "chat.completion.chunk",
                    "created": last.get("created"),
                    "model": last.get("model"),
                    "choices": [],
                    "usage": {**_usage_payload(usage), "cost_usd": _usd(cost)},
                }
            )
        yield SSE_DONE
    except GatewayError as exc:
        # Bytes are already with the client: the error can only travel as an event.
        call.record.status, call.record.error_type = exc.status, exc.code or exc.type
        yield sse(exc.body())
    except BaseException:
        call.record.status, call.record.error_type = 499, "client_closed"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()  # type: ignore[attr-defined]
            if call.record.status != 200:
                usage = await _final_usage(call, deployment.model, chat, reported, text)
                _charge(call, deployment.price.cost(usage), usage)
            await settle_request(gateway.ledger, call.hold, call.record)
        gateway.spend.record(call.record)


async def _final_usage(
    call: _Call,
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


def _charge(call: _Call, cost: Decimal, usage: Usage) -> Decimal:
    call.record.prompt_tokens = usage.prompt_tokens
    call.record.completion_tokens = usage.completion_tokens
    call.record.cached_tokens = usage.cached_tokens
    call.record.cost_usd = cost
    return cost


def _routing_headers(call: _Call, decision: Decision) -> dict[str, str]:
    return {
        "x-request-id": call.record.request_id,
        "x-rightsize-model": decision.deployment.name,
        "x-rightsize-tier": decision.tier or "",
        "x-rightsize-cache": "miss",
        "x-rightsize-overhead-ms": f"{call.record.overhead_ms or 0:.3f}",
    }


def _usage_payload(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


async def _log_failure(gateway: Gateway, call: _Call, exc: GatewayError) -> None:
    call.record.status = exc.status
    call.record.error_type = exc.code or exc.type
    if call.record.overhead_ms is None:
        call.record.overhead_ms = call.elapsed_ms() - (call.record.upstream_ms or 0)
    await settle_request(gateway.ledger, call.hold, call.record)
    gateway.spend.record(call.record)


def _usd(cost: Decimal) -> str:
    return format(cost.normalize(), "f") if cost else "0"


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _now() -> datetime:
    return datetime.now(UTC)
