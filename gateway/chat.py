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
from starlette.background import BackgroundTask

from gateway.auth import bearer_token
from gateway.cache import CacheLookup, StreamAssembler
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RevokedKey,
    UpstreamBadRequest,
    UpstreamError,
)
from gateway.http import SSE_DONE, error_response, json_response, read_json, request_id, sse
from gateway.ledger.ledger import Hold
from gateway.ledger.metering import reserve_cache_hit, reserve_request, settle_request
from gateway.limits import check_chat_shape
from gateway.outage import unavailable
from gateway.schemas import ChatRequest
from gateway.settings import ServerSettings
from gateway.state import Gateway
from gateway.store import ApiKey, SpendRecord
from gateway.tokens import count_prompt_tokens
from gateway.usage import completion_text, count_usage, usage_from
from policies import (
    Decision,
    Deployment,
    NotAllowed,
    Refusal,
    RoutingRequest,
    TeamContext,
    UnknownModel,
    Usage,
)
from router import Estimate, prompt_from_messages

log = logging.getLogger("rightsize.chat")


@dataclass(slots=True)
class _Call:
    """One request in flight: what the spend log will say about it."""

    record: SpendRecord
    started: float = field(default_factory=time.perf_counter)
    estimate: Estimate | None = None
    hold: Hold | None = None  # the ledger's reservation, settled wherever the record is written

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    call = _Call(SpendRecord(request_id=request_id(request), created_at=_now(), status=200))
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        call.record.team, call.record.key_id = key.team, key.id
        chat = await read_json(request, gateway.settings.server, parse_chat_request)
        call.record.requested_model, call.record.stream = chat.model, bool(chat.stream)
        payload = chat.upstream_payload()
        # The cache comes before the router: an exact hit costs no encode. Its key holds the
        # requested name (model, tier or auto), which with the prompt determines the route.
        cached = await gateway.cache.lookup(
            key.team,
            chat.model,
            chat,
            request.headers,
            embedding=await _embedding(gateway, key.team, payload["messages"]),
        )
        if cached.hit:
            # A hit costs nothing upstream but still counts against request-rate limits.
            call.hold = await reserve_cache_hit(gateway.ledger, key.team, key.id)
            return await _from_cache(gateway, call, key, chat, payload, cached)
        call.estimate = await _estimate(gateway, payload["messages"])
        team = TeamContext(key.team, budget_used=await _budget_used(gateway, key))
        n_prompt = await count_prompt_tokens(payload["messages"])
        decision = _decide(gateway, key, chat, payload, n_prompt, call.estimate, team)
        call.record.deployment, call.record.tier = decision.deployment.name, decision.tier
        call.record.route_reason = decision.reason
        # The hold is what the router predicts (p90 output tokens), not the worst case.
        predicted = call.estimate.token_budget_p90 if call.estimate else None
        call.hold = await reserve_request(
            gateway.ledger, key.team, key.id, chat, decision.deployment, predicted
        )
        if chat.stream:
            return await _stream(gateway, call, chat, payload, decision, cached)
        return await _complete(gateway, call, payload, decision, cached)
    except RevokedKey as exc:
        call.record.team, call.record.key_id = exc.team, exc.key_id
        await _log_failure(gateway, call, exc)
        return error_response(exc, call.record.request_id)
    except GatewayError as exc:
        await _log_failure(gateway, call, exc)
        return error_response(exc, call.record.request_id)
    except Exception as exc:
        # The store or Redis down before the request was admitted: 503, try again later. After
        # admission no dependency of ours is called (a settlement keeps itself for a retry), so
        # anything else is a bug: 500 with its traceback.
        outage = unavailable(exc) if call.hold is None else None
        if outage is not None:
            log.warning("request %s refused: %s: %r", call.record.request_id, outage.message, exc)
            await _log_failure(gateway, call, outage)
            return error_response(outage, call.record.request_id)
        log.exception("request %s failed inside the gateway", call.record.request_id)
        internal = GatewayError(f"Internal gateway error (request {call.record.request_id})")
        await _log_failure(gateway, call, internal)
        return error_response(internal, call.record.request_id)


def parse_chat_request(body: Any, server: ServerSettings) -> ChatRequest:
    """Validate a decoded body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    check_chat_shape(body, server)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _dotted(error["loc"])
        raise InvalidRequest(f"Invalid value for {param!r}: {error['msg']}", param=param) from None


async def _estimate(gateway: Gateway, messages: list[dict[str, Any]]) -> Estimate | None:
    """The router's estimate of the prompt; a router failure is logged, never fatal."""
    if gateway.estimator is None:
        return None
    try:
        return await gateway.estimator.estimate(prompt_from_messages(messages))
    except Exception:
        log.exception("the router failed; routing this request without an estimate")
        return None


async def _embedding(gateway: Gateway, team: str, messages: list[dict[str, Any]]) -> Any | None:
    """The router's embedding of the prompt, for the semantic cache tier of teams that use it.

    The router keeps the embeddings it just computed for the estimate, so this is a lookup,
    not a second encode.
    """
    if gateway.router is None or not gateway.cache.semantic_enabled(team):
        return None
    text = prompt_from_messages(messages)
    return (await asyncio.to_thread(gateway.router.embed_batch, [text]))[0]


async def _budget_used(gateway: Gateway, key: ApiKey) -> float | None:
    """The team's budget share, read only when the policy caps tiers on it (a store read)."""
    if gateway.policy.spec.soft_budget is None:
        return None
    return await gateway.ledger.budget_used(key.team, key.id)


def _decide(
    gateway: Gateway,
    key: ApiKey,
    chat: ChatRequest,
    payload: dict[str, Any],
    n_prompt_tokens: int,
    estimate: Estimate | None,
    team: TeamContext | None = None,
) -> Decision:
    routing = RoutingRequest(
        model=chat.model,
        prompt_tokens=n_prompt_tokens,
        max_output_tokens=chat.max_completion_tokens or chat.max_tokens,
        needs_tools=bool(chat.tools or chat.functions),
        needs_vision=_has_images(payload["messages"]),
        needs_json_schema=chat.response_format is not None
        and chat.response_format.type == "json_schema",
    )
    try:
        decision = gateway.policy.decide(routing, estimate, team or TeamContext(name=key.team))
    except UnknownModel as exc:
        raise NotFound(str(exc), param="model") from None
    except NotAllowed as exc:
        raise PermissionDenied(str(exc), param="model") from None
    except Refusal as exc:
        raise InvalidRequest(str(exc), param="model", code=exc.code) from None
    if not key.may_use(chat.model, decision.deployment.name, decision.tier):
        raise PermissionDenied(f"This key may not use model {chat.model!r}", param="model")
    return decision


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def _attempt_payload(
    payload: dict[str, Any], decision: Decision, deployment: Deployment
) -> dict[str, Any]:
    """The body for one deployment: the policy's reasoning effort unless the client set one."""
    effort = decision.reasoning_effort
    if effort and deployment.capabilities.reasoning and "reasoning_effort" not in payload:
        return {**payload, "reasoning_effort": effort}
    return payload


def _fall_back(gateway: Gateway, call: _Call, error: UpstreamError, to: Deployment) -> None:
    log.warning("%s; falling back to %r", error.message, to.name)
    call.record.attempts += 1
    call.record.deployment = to.name
    call.record.tier = gateway.policy.tier_of(to.name) or to.tier
    call.record.route_reason = f"{call.record.route_reason}; {error.code} -> fallback {to.name!r}"


async def _backoff(gateway: Gateway, attempt: int) -> None:
    delay = gateway.policy.spec.retries.backoff_ms * (2**attempt) / 1000
    if delay:
        await asyncio.sleep(delay)


async def _from_cache(
    gateway: Gateway,
    call: _Call,
    key: ApiKey,
    chat: ChatRequest,
    payload: dict[str, Any],
    cached: CacheLookup,
) -> Response:
    """Answer from the prompt cache: no upstream call, cost 0, the saved cost in the spend log."""
    assert cached.answer is not None
    # The team's and key's rules still apply to a stored answer (they may have changed).
    n_prompt = await count_prompt_tokens(payload["messages"])
    decision = _decide(gateway, key, chat, payload, n_prompt, None)
    deployment = gateway.catalog.get(cached.answer.deployment) or decision.deployment
    call.record.deployment = deployment.name
    call.record.tier = gateway.policy.tier_of(deployment.name) or deployment.tier
    call.record.route_reason = f"prompt cache hit ({cached.tier}), answered by {deployment.name!r}"
    usage = cached.answer.usage
    _charge(call, Decimal(0), usage)
    call.record.cache_hit = True
    call.record.saved_usd = deployment.price.cost(usage)
    call.record.upstream_ms = 0.0
    call.record.overhead_ms = call.elapsed_ms()
    headers = {**_routing_headers(call), "x-rightsize-cache": "hit"}
    if cached.similarity is not None:
        headers["x-rightsize-cache-similarity"] = f"{cached.similarity:.6f}"
    response: Response
    if chat.stream:
        chunks = cached.answer.chunks(chat.wants_usage_chunk(), cost_usd="0")
        body = b"".join(sse(chunk) for chunk in chunks) + SSE_DONE
        headers["cache-control"] = "no-cache"
        response = Response(body, media_type="text/event-stream", headers=headers)
    else:
        headers["x-rightsize-cost-usd"] = "0"
        response = json_response(cached.answer.response(), headers=headers)
    gateway.spend.record(call.record)
    await settle_request(gateway.ledger, call.hold, call.record)
    return response


async def _complete(
    gateway: Gateway,
    call: _Call,
    payload: dict[str, Any],
    decision: Decision,
    cached: CacheLookup,
) -> Response:
    upstream_started = time.perf_counter()
    attempts = decision.attempts()
    try:
        for attempt, deployment in enumerate(attempts):
            try:
                result = await gateway.provider(deployment).complete(
                    deployment, _attempt_payload(payload, decision, deployment)
                )
                break
            except UpstreamBadRequest:
                raise  # the request itself is at fault: another deployment would refuse it too
            except UpstreamError as exc:
                if attempt + 1 == len(attempts):
                    raise
                _fall_back(gateway, call, exc, attempts[attempt + 1])
                await _backoff(gateway, attempt)
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
    gateway.spend.record(call.record)
    await settle_request(gateway.ledger, call.hold, call.record)
    headers = _routing_headers(call)
    headers["x-rightsize-cost-usd"] = _usd(cost)
    response = json_response(result, headers=headers)
    if cached.write:
        # Stored after the response is sent: a slow cache never delays the client.
        response.background = BackgroundTask(gateway.cache.store, cached, deployment.name, result)
    return response


async def _stream(
    gateway: Gateway,
    call: _Call,
    chat: ChatRequest,
    payload: dict[str, Any],
    decision: Decision,
    cached: CacheLookup,
) -> Response:
    upstream_started = time.perf_counter()
    attempts = decision.attempts()
    try:
        for attempt, deployment in enumerate(attempts):
            upstream = gateway.provider(deployment).stream(
                deployment, _attempt_payload(payload, decision, deployment)
            )
            try:
                first = await anext(upstream)
                break
            except StopAsyncIteration:
                error = UpstreamError(deployment.name, "the stream ended before any chunk")
            except UpstreamBadRequest:
                await upstream.aclose()  # type: ignore[attr-defined]
                raise
            except UpstreamError as exc:
                error = exc
            except BaseException:
                await upstream.aclose()  # type: ignore[attr-defined]
                raise
            await upstream.aclose()  # type: ignore[attr-defined]
            # Nothing has reached the client yet, so another deployment may still answer.
            if attempt + 1 == len(attempts):
                raise error
            _fall_back(gateway, call, error, attempts[attempt + 1])
            await _backoff(gateway, attempt)
    finally:
        call.record.upstream_ms = (time.perf_counter() - upstream_started) * 1000
    call.record.overhead_ms = call.elapsed_ms() - call.record.upstream_ms
    return StreamingResponse(
        _relay(gateway, call, chat, deployment, first, upstream, cached),
        media_type="text/event-stream",
        headers={**_routing_headers(call), "cache-control": "no-cache"},
    )


async def _relay(
    gateway: Gateway,
    call: _Call,
    chat: ChatRequest,
    deployment: Deployment,
    first: dict[str, Any],
    upstream: AsyncIterator[dict[str, Any]],
    cached: CacheLookup,
) -> AsyncIterator[bytes]:
    """Forward chunks; end with our own usage chunk (with cost) when the client asked for it."""
    assembler = StreamAssembler() if cached.write else None
    completion: dict[str, Any] | None = None
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
                if assembler is not None:
                    assembler.add(chunk)
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
        if assembler is not None:
            completion = assembler.completion(_usage_payload(usage))
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
            gateway.spend.record(call.record)
            await settle_request(gateway.ledger, call.hold, call.record)
    if completion is not None and call.record.status == 200:
        # After [DONE] has gone out: the client does not wait for the cache.
        await gateway.cache.store(cached, deployment.name, completion)


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


def _routing_headers(call: _Call) -> dict[str, str]:
    headers = {
        "x-request-id": call.record.request_id,
        "x-rightsize-model": call.record.deployment or "",
        "x-rightsize-tier": call.record.tier or "",
        "x-rightsize-cache": "miss",
        "x-rightsize-overhead-ms": f"{call.record.overhead_ms or 0:.3f}",
    }
    if call.estimate is not None:
        headers["x-rightsize-demand"] = f"{call.estimate.reasoning_demand:.3f}"
        headers["x-rightsize-token-budget"] = (
            f"{call.estimate.token_budget_p50}/{call.estimate.token_budget_p90}"
        )
    return headers


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
    gateway.spend.record(call.record)
    await settle_request(gateway.ledger, call.hold, call.record)


def _usd(cost: Decimal) -> str:
    return format(cost.normalize(), "f") if cost else "0"


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _now() -> datetime:
    return datetime.now(UTC)
