"""Attempt with fallbacks: the one loop that tries a decision's deployments in order.

Plain and streamed calls share it; they differ only in what one attempt is (a whole
completion, or a stream opened up to its first chunk, before any byte reaches the client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import InvalidRequest, UpstreamBadRequest, UpstreamError
from gateway.native import NativeProvider, NativeRequest
from gateway.providers import Provider
from gateway.state import Gateway
from gateway.upstreams import endpoint_of
from policies import Decision, Deployment
from policies.params import THINKING_BUDGETS

log = logging.getLogger("rightsize.chat")

T = TypeVar("T")


async def attempt_with_fallbacks(
    attempts: Sequence[Deployment],
    once: Callable[[Deployment], Awaitable[T]],
    *,
    backoff_ms: float,
    on_fallback: Callable[[UpstreamError, Deployment], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[Deployment, T]:
    """The first deployment's answer to `once`, falling back on an upstream failure.

    A bad request is not retried: the request itself is at fault, so another deployment
    would refuse it too. The last failure is raised when every deployment failed, its message
    naming each attempt's deployment, address and failure.
    """
    failures: list[str] = []
    for attempt, deployment in enumerate(attempts):
        try:
            return deployment, await once(deployment)
        except UpstreamError as exc:
            failures.append(describe_failure(deployment, exc))
            if isinstance(exc, UpstreamBadRequest) or attempt + 1 == len(attempts):
                exc.retell(failures)
                raise
            log.warning("%s; falling back to %r", exc.message, attempts[attempt + 1].name)
            on_fallback(exc, attempts[attempt + 1])
            delay = backoff_s(backoff_ms, attempt)
            if delay:
                await sleep(delay)
    raise ValueError("a decision has at least one deployment to attempt")


def describe_failure(deployment: Deployment, error: UpstreamError) -> str:
    """One failed attempt in words: which deployment, at which address, what happened."""
    status = f" (status {error.upstream_status})" if error.upstream_status else ""
    return (
        f"deployment {deployment.name!r} at {endpoint_of(deployment)} failed{status}: "
        f"{error.reason}"
    )


def backoff_s(backoff_ms: float, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 0): doubling each time."""
    return backoff_ms * (2**attempt) / 1000


def native_provider(
    gateway: Gateway, deployment: Deployment, native: NativeRequest | None
) -> NativeProvider | None:
    """The provider that sends the request as the client wrote it, when the deployment speaks
    the client's API; None: the translation goes. What only that API can serve is a 400
    naming the field and the deployment, not a request silently answered without it."""
    if native is None:
        return None
    speaker = gateway.native(deployment, native.api)
    if speaker is None and native.native_only:
        name, why = native.native_only[0]
        raise InvalidRequest(
            f"{name}: not supported by the deployment {deployment.name!r} ({why}); it is "
            f"served only by deployments of the {native.api.title()} API",
            param=name,
        )
    return speaker


def attempt_payload(
    payload: dict[str, Any], decision: Decision, deployment: Deployment
) -> dict[str, Any]:
    """The body for one deployment: the policy's reasoning effort unless the client set one."""
    effort = decision.reasoning_effort
    if effort and deployment.capabilities.reasoning and "reasoning_effort" not in payload:
        return {**payload, "reasoning_effort": effort}
    return payload


def native_attempt(
    native: NativeRequest, decision: Decision, deployment: Deployment
) -> tuple[NativeRequest, str | None]:
    """The native (Anthropic) body for one deployment: the policy's reasoning effort as
    `thinking` unless the client set it, and why it was not sent when it could not be.

    Anthropic takes a thinking budget of at least 1,024 tokens below max_tokens, and refuses it
    beside a changed temperature or top_k or a forced tool choice: then the request goes as
    the client wrote it and the reason is returned for the spend row.
    """
    effort = decision.reasoning_effort
    body = native.body
    if not effort or not deployment.capabilities.reasoning or "thinking" in body:
        return native, None
    budget = THINKING_BUDGETS.get(effort)
    if budget is None:  # "none": no thinking asked for
        return native, None
    refusal = None
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens <= budget:
        refusal = f"max_tokens {max_tokens} is not above the thinking budget {budget}"
    elif body.get("temperature", 1) != 1 or "top_k" in body:
        refusal = "temperature or top_k is set"
    elif (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        refusal = "a tool use is forced"
    if refusal is not None:
        return native, f"reasoning effort {effort!r} not sent as thinking: {refusal}"
    thinking = {"type": "enabled", "budget_tokens": budget}
    return dataclasses.replace(native, body={**body, "thinking": thinking}), None


@dataclass(slots=True)
class OpenStream:
    """An upstream stream that has produced its first chunk; the relay reads the rest."""

    first: dict[str, Any]
    rest: AsyncIterator[dict[str, Any]]


async def open_stream(
    provider: Provider, deployment: Deployment, payload: dict[str, Any]
) -> OpenStream:
    """One streamed attempt: the stream up to its first chunk, closed again if that fails.

    Until the first chunk nothing has reached the client, so a failure here may still
    fall back to another deployment.
    """
    return await open_upstream(provider.stream(deployment, payload), deployment)


async def open_upstream(
    upstream: AsyncIterator[dict[str, Any]], deployment: Deployment
) -> OpenStream:
    """A stream, any provider's, up to its first chunk (see open_stream)."""
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        await upstream.aclose()  # type: ignore[attr-defined]
        raise UpstreamError(deployment.name, "the stream ended before any chunk") from None
    except BaseException:
        await upstream.aclose()  # type: ignore[attr-defined]
        raise
    return OpenStream(first, upstream)
