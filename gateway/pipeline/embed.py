"""An embeddings request: authenticate, resolve the named embedding model, hold, call, settle
and log. Not routed (no estimate, no tiers, no cache): the client names the model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied, UpstreamError
from gateway.pipeline.attempts import describe_failure
from gateway.pipeline.call import Call, charge, finish, routing_headers, usd
from gateway.pipeline.metering import reserve_embedding
from gateway.pipeline.run import Answer, Refused, guarded, new_call
from gateway.pipeline.steps import authenticate
from gateway.providers import EmbeddingProvider
from gateway.state import Gateway
from gateway.store import ApiKey
from gateway.tokens import INLINE_COUNT_CHARS, texts_tokens
from policies import AUTO, Deployment, Usage


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A validated embeddings body: the model named, its inputs one by one, the body to send."""

    model: str
    inputs: list[str | list[int]]  # texts, or token ids
    payload: dict[str, Any]


async def embed(
    gateway: Gateway,
    request_id: str,
    token: str | None,
    read: Callable[[], Awaitable[EmbeddingRequest]],
) -> Answer | Refused:
    """Serve one embeddings request; every failure becomes a logged `Refused`."""
    call = new_call(request_id)

    async def serve() -> Answer:
        key = await authenticate(gateway, call, token)
        request = await read()
        call.record.requested_model = request.model
        deployment = embedding_deployment(gateway, key, request.model)
        call.record.deployment = deployment.name
        call.record.route_reason = f"embeddings: model {deployment.name!r} named by the client"
        n_input = await count_input_tokens(request.inputs)
        call.hold = await reserve_embedding(gateway.ledger, key.team, key.id, deployment, n_input)
        result = await _call(gateway, call, deployment, request.payload)
        usage = _usage(result)
        if usage is None:
            # The upstream did not say: the hold's count is the bill, and the row says so.
            usage = Usage(n_input, 0)
            call.record.usage_estimated = True
            result["usage"] = {"prompt_tokens": n_input, "total_tokens": n_input}
        cost = charge(call, deployment.price.cost(usage), usage)
        call.record.overhead_ms = call.elapsed_ms() - (call.record.upstream_ms or 0)
        await finish(gateway, call)
        headers = routing_headers(call)
        headers["x-rightsize-cost-usd"] = usd(cost)
        return Answer(result, headers)

    return await guarded(gateway, call, serve)


def embedding_deployment(gateway: Gateway, key: ApiKey, model: str) -> Deployment:
    """The embedding model the client named; `auto`, a tier or a chat model is a 400 that
    lists the embedding models there are."""
    deployment = gateway.catalog.get(model)
    if deployment is not None and deployment.embedding:
        if not key.may_use(model):
            raise PermissionDenied(f"This key may not use model {model!r}", param="model")
        return deployment
    names = [d.name for d in gateway.catalog.deployments if d.embedding and key.may_use(d.name)]
    offer = f"one of: {', '.join(names)}" if names else "none is configured (mode: embedding)"
    if model == AUTO or model in gateway.policy.tiers:
        raise InvalidRequest(
            f"{model!r} is routed by reasoning demand, which embeddings have none of: name an "
            f"embedding model ({offer})",
            param="model",
            code="model_not_routable",
        )
    if deployment is not None:
        raise InvalidRequest(
            f"{model!r} is a chat model, not an embedding model ({offer})",
            param="model",
            code="not_an_embedding_model",
        )
    raise NotFound(f"The model {model!r} does not exist (embedding models: {offer})", param="model")


async def count_input_tokens(inputs: list[str | list[int]]) -> int:
    """The inputs' tokens for the hold: token ids as given, texts in cl100k (off the event loop
    when long, as a chat prompt is)."""
    ids = sum(len(i) for i in inputs if isinstance(i, list))
    texts = [i for i in inputs if isinstance(i, str)]
    if sum(len(t) for t in texts) <= INLINE_COUNT_CHARS:
        return ids + texts_tokens(texts)
    return ids + await asyncio.to_thread(texts_tokens, texts)


async def _call(
    gateway: Gateway, call: Call, deployment: Deployment, payload: dict[str, Any]
) -> dict[str, Any]:
    provider = gateway.providers.get(deployment.transport)
    if not isinstance(provider, EmbeddingProvider):
        raise GatewayError(f"Transport {deployment.transport!r} cannot serve embeddings")
    started = time.perf_counter()
    try:
        return await provider.embed(deployment, payload)
    except UpstreamError as exc:
        exc.retell([describe_failure(deployment, exc)])
        raise
    finally:
        call.record.upstream_ms = (time.perf_counter() - started) * 1000


def _usage(result: dict[str, Any]) -> Usage | None:
    usage = result.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    return Usage(usage["prompt_tokens"], 0)
