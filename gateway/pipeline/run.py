"""The request pipeline: one internal request in, one typed outcome out.

authenticate → parse → cache → estimate, and the conversation's sticky floor → decide → hold →
attempt with fallbacks → relay (streams) → settle and log; the tier that served an `auto` or
tier request is remembered for its conversation (gateway/stickiness.py). An API adapter
(gateway/api/chat.py for OpenAI) builds the `Inbound`, calls `run` and renders the `Outcome` in
its own wire format. When nothing before
the upstream call reads the estimate (a pinned model, no budget), it runs beside the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from gateway.cache import CacheLookup
from gateway.errors import GatewayError, RevokedKey, UpstreamError, from_ledger
from gateway.latency import requested_class, served_now
from gateway.native import NATIVE, NativeRequest
from gateway.outage import unavailable
from gateway.pipeline.attempts import (
    OpenStream,
    attempt_payload,
    attempt_with_fallbacks,
    native_attempt,
    native_provider,
    open_stream,
    open_upstream,
)
from gateway.pipeline.call import (
    Call,
    charge,
    finish,
    routing_headers,
    span,
    usage_payload,
    usd,
)
from gateway.pipeline.relay import StreamEvent, relay
from gateway.pipeline.shadowing import offer_shadow
from gateway.pipeline.steps import (
    authenticate,
    conversation,
    decide,
    deployment_budget,
    deployment_states,
    estimate,
    estimate_can_wait,
    hold,
    hold_cache_hit,
    lookup_cache,
    remember_tier,
    sticky_floor,
    team_context,
)
from gateway.schemas import ChatRequest
from gateway.state import Gateway
from gateway.store import ApiKey, SpendRecord
from gateway.tokens import count_prompt_tokens
from gateway.usage import completion_text, count_usage, usage_from
from ledger.errors import LedgerError
from policies import INTERACTIVE, Decision, Deployment
from router import Estimate

log = logging.getLogger("rightsize.chat")

T = TypeVar("T")
Served = TypeVar("Served", bound="Answer | Replay | Stream | Refused")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One request as the pipeline takes it, whichever API it arrived on."""

    request_id: str
    token: str | None  # the presented key, as the adapter found it in its headers
    headers: Mapping[str, str]  # the cache reads its directives here
    # The body, read and validated by the adapter into the internal request; called only after
    # authentication, so an unknown caller gets 401 before its body is read.
    read: Callable[[], Awaitable[ChatRequest]]
    api: str = "openai"  # the API the request came in on, for the spend log
    # After `read`: the body in its own API, for deployments that take it as is (None: none do).
    native: Callable[[], NativeRequest | None] | None = None


@dataclass(slots=True)
class Answer:
    """A whole completion, fresh or from the cache."""

    completion: dict[str, Any]
    headers: dict[str, str]
    # Run once the answer is sent (the cache store): a slow cache never delays the client.
    after: Callable[[], Awaitable[None]] | None = None
    # The upstream's own answer in the client's API, when a native deployment served it.
    native: dict[str, Any] | None = None


@dataclass(slots=True)
class Replay:
    """A cached answer to a streamed request: every chunk at once, already metered."""

    chunks: list[dict[str, Any]]
    headers: dict[str, str]


@dataclass(slots=True)
class Stream:
    """An upstream stream being relayed; metered and settled when the events end."""

    events: AsyncGenerator[StreamEvent, None]
    headers: dict[str, str]


@dataclass(slots=True)
class Refused:
    """The request failed before any byte of an answer; already logged and settled."""

    error: GatewayError
    request_id: str


Outcome = Answer | Replay | Stream | Refused


async def run(gateway: Gateway, inbound: Inbound) -> Outcome:
    """Serve one request; every failure becomes a logged `Refused`, never an exception."""
    call = new_call(inbound.request_id)
    call.record.api = inbound.api
    if gateway.tracing is not None:
        call.trace = gateway.tracing.start(inbound.request_id, inbound.headers)
    return await guarded(gateway, call, partial(_serve, gateway, call, inbound))


def new_call(request_id: str) -> Call:
    """A request starting now, its spend record a success until it fails."""
    return Call(SpendRecord(request_id=request_id, created_at=_now(), status=200))


async def guarded(
    gateway: Gateway, call: Call, serve: Callable[[], Awaitable[Served]]
) -> Served | Refused:
    """`serve`'s outcome; any failure instead becomes a `Refused`, logged and settled (the
    chat pipeline's and the embeddings endpoint's one error ladder)."""
    try:
        return await serve()
    except RevokedKey as exc:
        call.record.team, call.record.key_id = exc.team, exc.key_id
        return await _refuse(gateway, call, exc)
    except GatewayError as exc:
        return await _refuse(gateway, call, exc)
    except LedgerError as exc:
        return await _refuse(gateway, call, from_ledger(exc))
    except Exception as exc:
        # The store or Redis down before the request was admitted: 503, try again later. After
        # admission no dependency of ours is called (a settlement keeps itself for a retry), so
        # anything else is a bug: 500 with its traceback.
        outage = unavailable(exc) if call.hold is None else None
        if outage is not None:
            log.warning("request %s refused: %s: %r", call.record.request_id, outage.message, exc)
            return await _refuse(gateway, call, outage)
        log.exception("request %s failed inside the gateway", call.record.request_id)
        internal = GatewayError(f"Internal gateway error (request {call.record.request_id})")
        return await _refuse(gateway, call, internal)


async def _serve(gateway: Gateway, call: Call, inbound: Inbound) -> Outcome:
    key = await authenticate(gateway, call, inbound.token)
    latency = requested_class(inbound.headers, key)
    if latency.latency_class is not None:
        call.record.latency_class = latency.latency_class
    chat = await inbound.read()
    native = inbound.native() if inbound.native is not None else None
    call.record.requested_model, call.record.stream = chat.model, bool(chat.stream)
    payload = chat.upstream_payload()
    messages = payload["messages"]
    variant = native.cache_variant() if native is not None else ""
    if call.trace is not None:
        call.trace.prompt(messages)
    with span(call, "rightsize.cache") as traced:
        cached = await lookup_cache(gateway, key, chat, messages, inbound.headers, variant)
        call.cache = "hit" if cached.hit else "miss" if cached.key is not None else "bypass"
        traced.set_attribute("rightsize.cache", call.cache)
    if cached.hit:
        with span(call, "rightsize.hold") as traced:
            call.hold = await hold_cache_hit(gateway, key)
            traced.set_attribute("rightsize.held", call.hold is not None)
        return await _from_cache(gateway, call, key, chat, messages, cached)
    team = await team_context(gateway, key)
    talk = conversation(gateway, key, chat, messages)
    floor = await sticky_floor(gateway, key, talk)
    n_prompt = await count_prompt_tokens(messages)
    later: asyncio.Task[Estimate | None] | None = None
    if await estimate_can_wait(gateway, key, chat, n_prompt, team):
        # Only the answer's headers read it: it runs while the upstream call is in flight.
        later = asyncio.create_task(_estimate(gateway, call, messages))
    else:
        call.estimate = await _estimate(gateway, call, messages)
    try:
        states = deployment_states(gateway)
        with span(call, "rightsize.decide") as traced:
            decision = decide(
                gateway.policy,
                key,
                chat,
                messages,
                n_prompt,
                call.estimate,
                team,
                floor,
                states,
                latency,
            )
            call.record.deployment, call.record.tier = decision.deployment.name, decision.tier
            call.record.latency_class = decision.latency_class
            call.record.route_reason = _route_reason(gateway, decision)
            call.rules = decision.rules
            if traced.is_recording():
                traced.set_attributes(_decision_attributes(decision))
        with span(call, "rightsize.hold") as traced:
            call.hold = await hold(gateway, key, chat, decision, call, n_prompt)
            traced.set_attribute("rightsize.held", call.hold is not None)
        outcome: Answer | Stream
        if chat.stream:
            outcome = await _stream(gateway, call, chat, payload, decision, cached, later, native)
        else:
            outcome = await _complete(gateway, call, payload, decision, cached, later, native)
        # Before the answer goes out, so that the client's next turn finds it.
        await remember_tier(gateway, talk, decision)
        return outcome
    finally:
        if later is not None:
            later.cancel()  # a refused or failed call has no headers to fill: no-op once done


async def _estimate(
    gateway: Gateway, call: Call, messages: list[dict[str, Any]]
) -> Estimate | None:
    with span(call, "rightsize.estimate") as traced:
        found = await estimate(gateway, messages)
        if found is not None and traced.is_recording():
            traced.set_attributes(
                {
                    "rightsize.reasoning_demand": float(found.reasoning_demand),
                    "rightsize.token_budget_p50": int(found.token_budget_p50),
                    "rightsize.token_budget_p90": int(found.token_budget_p90),
                    "rightsize.category": str(found.category),
                }
            )
        return found


def _route_reason(gateway: Gateway, decision: Decision) -> str:
    """The decision's explanation, and what the gateway adds: a half-open probe of a deployment
    breaking its latency objective, a batch or background request answered at once."""
    notes = [decision.reason]
    if gateway.latency is not None and decision.latency_class == INTERACTIVE:
        notes.append(gateway.latency.chosen(decision.deployment.name) or "")
    notes.append(served_now(decision) or "")
    return "; ".join(n for n in notes if n)


def _decision_attributes(decision: Decision) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "rightsize.deployment": decision.deployment.name,
        "rightsize.route_reason": decision.reason,
        "rightsize.fallbacks": [d.name for d in decision.attempts()[1:]],
    }
    if decision.tier is not None:
        attributes["rightsize.tier"] = decision.tier
    return attributes


async def _from_cache(
    gateway: Gateway,
    call: Call,
    key: ApiKey,
    chat: ChatRequest,
    messages: list[dict[str, Any]],
    cached: CacheLookup,
) -> Answer | Replay:
    """Answer from the prompt cache: no upstream call, cost 0, the saved cost in the spend log."""
    assert cached.answer is not None
    # The team's and key's rules still apply to a stored answer (they may have changed).
    n_prompt = await count_prompt_tokens(messages)
    decision = decide(gateway.policy, key, chat, messages, n_prompt, None)
    deployment = gateway.catalog.get(cached.answer.deployment) or decision.deployment
    call.record.deployment = deployment.name
    call.record.tier = gateway.policy.tier_of(deployment.name) or deployment.tier
    call.record.route_reason = f"prompt cache hit ({cached.tier}), answered by {deployment.name!r}"
    usage = cached.answer.usage
    charge(call, Decimal(0), usage)
    call.record.cache_hit = True
    call.record.saved_usd = deployment.price.cost(usage)
    call.record.upstream_ms = 0.0
    call.record.overhead_ms = call.elapsed_ms()
    headers = {**routing_headers(call), "x-rightsize-cache": "hit"}
    if cached.similarity is not None:
        headers["x-rightsize-cache-similarity"] = f"{cached.similarity:.6f}"
    outcome: Answer | Replay
    if chat.stream:
        chunks = list(cached.answer.chunks(chat.wants_usage_chunk(), cost_usd="0"))
        outcome = Replay(chunks, headers)
    else:
        headers["x-rightsize-cost-usd"] = "0"
        outcome = Answer(cached.answer.response(), headers)
    await finish(gateway, call)
    return outcome


async def _complete(
    gateway: Gateway,
    call: Call,
    payload: dict[str, Any],
    decision: Decision,
    cached: CacheLookup,
    later: Awaitable[Estimate | None] | None = None,
    native: NativeRequest | None = None,
) -> Answer:
    async def once(deployment: Deployment, body: dict[str, Any]) -> dict[str, Any]:
        speaker = native_provider(gateway, deployment, native)
        if speaker is not None and native is not None:
            return await speaker.complete_native(
                deployment, _native_body(call, native, decision, deployment)
            )
        return await gateway.provider(deployment).complete(deployment, body)

    deployment, result = await _attempt(gateway, call, payload, decision, once, native)
    answered = result.pop(NATIVE, None)
    if later is not None:
        call.estimate = await later
    usage = usage_from(result.get("usage"))
    if usage is None:
        text = "".join(completion_text(c.get("message") or {}) for c in result.get("choices") or ())
        usage = await asyncio.to_thread(count_usage, deployment.model, payload["messages"], text)
        result["usage"] = usage_payload(usage)
        call.record.usage_estimated = True
    cost = charge(call, gateway.local_cost.cost(deployment, usage, call.record), usage)
    call.record.overhead_ms = call.elapsed_ms() - (call.record.upstream_ms or 0)
    # The settlement's round trip is not the client's to wait for: its command is sent before
    # the answer, its reply awaited after (docs/budgets.md, "Settled after the answer").
    settling = await finish(gateway, call, settle_after=True)
    headers = routing_headers(call)
    headers["x-rightsize-cost-usd"] = usd(cost)
    steps: list[Callable[[], Awaitable[None]]] = []
    if settling is not None:
        steps.append(partial(_await, settling))
    if cached.write:
        steps.append(partial(gateway.cache.store, cached, deployment.name, result))
    if gateway.shadow is not None:
        text = "".join(completion_text(c.get("message") or {}) for c in result.get("choices") or ())
        steps.append(partial(_offer_shadow, gateway, call, payload, text))
    after = steps[0] if len(steps) == 1 else partial(_in_turn, *steps) if steps else None
    return Answer(result, headers, after, native=answered)


async def _await(settling: Awaitable[None]) -> None:
    await settling


async def _offer_shadow(gateway: Gateway, call: Call, payload: dict[str, Any], text: str) -> None:
    offer_shadow(gateway, call, payload, text)


async def _in_turn(*steps: Callable[[], Awaitable[None]]) -> None:
    for step in steps:
        await step()


async def _stream(
    gateway: Gateway,
    call: Call,
    chat: ChatRequest,
    payload: dict[str, Any],
    decision: Decision,
    cached: CacheLookup,
    later: Awaitable[Estimate | None] | None = None,
    native: NativeRequest | None = None,
) -> Stream:
    async def once(deployment: Deployment, body: dict[str, Any]) -> OpenStream:
        speaker = native_provider(gateway, deployment, native)
        if speaker is not None and native is not None:
            sent = _native_body(call, native, decision, deployment)
            return await open_upstream(speaker.stream_native(deployment, sent), deployment)
        return await open_stream(gateway.provider(deployment), deployment, body)

    deployment, opened = await _attempt(gateway, call, payload, decision, once, native)
    call.first_token_ms = call.elapsed_ms()
    if call.attempt_started is not None:
        call.attempt_first_token_ms = (time.perf_counter() - call.attempt_started) * 1000
    if later is not None:
        # The headers go out with the first chunk, after this: they carry the estimate.
        try:
            call.estimate = await later
        except BaseException:  # the request cancelled: the relay that closes it never starts
            await opened.rest.aclose()  # type: ignore[attr-defined]
            raise
    call.record.overhead_ms = call.elapsed_ms() - (call.record.upstream_ms or 0)
    events = relay(gateway, call, chat, deployment, opened, cached)
    return Stream(events, routing_headers(call))


def _native_body(
    call: Call, native: NativeRequest, decision: Decision, deployment: Deployment
) -> NativeRequest:
    """The native request for one attempt, noting in the spend row an effort not sent."""
    sent, unsent = native_attempt(native, decision, deployment)
    if unsent is not None:
        call.record.route_reason = f"{call.record.route_reason}; {unsent}"
    return sent


async def _fitted(
    gateway: Gateway,
    call: Call,
    payload: dict[str, Any],
    decision: Decision,
    deployment: Deployment,
) -> dict[str, Any]:
    """The OpenAI-shaped body for one deployment: the policy's effort, the parameters it takes."""
    body = attempt_payload(payload, decision, deployment)
    # A pinned model is the client's choice: a parameter the client sent it that it does
    # not take is a 400, not a drop.
    pinned = deployment.name == call.record.requested_model
    call.fit = await gateway.params.fit(deployment, body, pinned_by=payload if pinned else ())
    body = call.fit.payload
    # After the fitting: vLLM's `priority` is no OpenAI parameter, the fitting would drop it.
    if gateway.local is not None and "priority" not in body:
        budget = deployment_budget(gateway, call.estimate, deployment.name)
        p50 = budget.token_budget_p50 if budget is not None else None
        priority = gateway.local.priority(deployment, p50)
        if priority is not None:
            body = {**body, "priority": priority}  # vLLM: lower runs first
    return body


async def _attempt(
    gateway: Gateway,
    call: Call,
    payload: dict[str, Any],
    decision: Decision,
    once: Callable[[Deployment, dict[str, Any]], Awaitable[T]],
    native: NativeRequest | None = None,
) -> tuple[Deployment, T]:
    """The decision's deployments tried in order, each fallback noted in the spend record."""
    started = time.perf_counter()
    tried = 0

    async def attempt(deployment: Deployment) -> T:
        nonlocal tried
        tried += 1
        if native is not None and native_provider(gateway, deployment, native) is not None:
            # Goes upstream in its own API's shape (native_attempt): the OpenAI payload and its
            # parameter fitting are not what is sent.
            call.fit, body = None, payload
        else:
            body = await _fitted(gateway, call, payload, decision, deployment)
        name = f"chat {deployment.upstream_model}" if call.trace is not None else ""
        with span(call, name, client=True) as traced:
            if traced.is_recording():
                traced.set_attributes(_attempt_attributes(deployment, body, tried))
            call.attempt_started = time.perf_counter()
            try:
                result = await once(deployment, body)
            except UpstreamError as exc:
                traced.set_attribute("error.type", exc.code or exc.type)
                raise
            if isinstance(result, dict) and traced.is_recording():
                traced.set_attributes(_response_attributes(result))
            return result

    def fell_back(error: UpstreamError, to: Deployment) -> None:
        call.record.attempts += 1
        call.record.deployment = to.name
        call.record.tier = gateway.policy.tier_of(to.name) or to.tier
        call.record.route_reason = (
            f"{call.record.route_reason}; {error.code} -> fallback {to.name!r}"
        )

    try:
        return await attempt_with_fallbacks(
            decision.attempts(),
            attempt,
            backoff_ms=gateway.policy.spec.retries.backoff_ms,
            on_fallback=fell_back,
        )
    finally:
        call.record.upstream_ms = (time.perf_counter() - started) * 1000
        if call.fit is not None and call.fit.changed:
            # The spend log's words for what the client sent and the upstream did not get.
            served = call.record.deployment or ""
            call.record.route_reason = f"{call.record.route_reason}; {call.fit.describe(served)}"


def _attempt_attributes(
    deployment: Deployment, body: dict[str, Any], attempt: int
) -> dict[str, Any]:
    """An upstream call in the GenAI semantic conventions' names (no prompt text)."""
    provider, sep, _ = deployment.model.partition("/")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider if sep else "openai",
        "gen_ai.request.model": deployment.upstream_model,
        "rightsize.deployment": deployment.name,
        "rightsize.transport": deployment.transport,
        "rightsize.attempt": attempt,
    }
    for field, name in (
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
        ("reasoning_effort", "rightsize.reasoning_effort"),
    ):
        value = body.get(field)
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            attributes[name] = value
    return attributes


def _response_attributes(result: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if isinstance(result.get("model"), str):
        attributes["gen_ai.response.model"] = result["model"]
    if isinstance(result.get("id"), str):
        attributes["gen_ai.response.id"] = result["id"]
    usage = result.get("usage")
    if isinstance(usage, dict):
        for field, name in (
            ("prompt_tokens", "gen_ai.usage.input_tokens"),
            ("completion_tokens", "gen_ai.usage.output_tokens"),
        ):
            if isinstance(usage.get(field), int):
                attributes[name] = usage[field]
    reasons = [c.get("finish_reason") for c in result.get("choices") or () if isinstance(c, dict)]
    if reasons and all(isinstance(r, str) for r in reasons):
        attributes["gen_ai.response.finish_reasons"] = reasons
    return attributes


async def _refuse(gateway: Gateway, call: Call, exc: GatewayError) -> Refused:
    call.record.status = exc.status
    call.record.error_type = exc.code or exc.type
    if call.record.overhead_ms is None:
        call.record.overhead_ms = call.elapsed_ms() - (call.record.upstream_ms or 0)
    await finish(gateway, call)
    return Refused(exc, call.record.request_id)


def _now() -> datetime:
    return datetime.now(UTC)
