"""The steps before the upstream call: authenticate, cache, estimate, decide, hold.

Each takes what it needs and returns a typed result, so it can be run alone with fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from gateway.cache import CacheLookup
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.latency import RequestedClass
from gateway.pipeline.call import Call
from gateway.pipeline.metering import reserve_cache_hit, reserve_request
from gateway.schemas import ChatRequest
from gateway.state import Gateway
from gateway.stickiness import Conversation, conversation_of
from gateway.store import ApiKey
from ledger.ledger import Hold
from policies import (
    AUTO,
    Catalog,
    Decision,
    DeploymentState,
    NotAllowed,
    PolicyEngine,
    Refusal,
    RoutingRequest,
    TeamContext,
    TierFloor,
    UnknownModel,
)
from router import Estimate, prompt_from_messages

log = logging.getLogger("rightsize.chat")


async def authenticate(gateway: Gateway, call: Call, token: str | None) -> ApiKey:
    """The caller's key (401 when missing, unknown or revoked), named in the spend record."""
    key = await gateway.keys.authenticate(token)
    call.record.team, call.record.key_id = key.team, key.id
    return key


async def lookup_cache(
    gateway: Gateway,
    key: ApiKey,
    chat: ChatRequest,
    messages: list[dict[str, Any]],
    headers: Mapping[str, str],
    variant: str = "",
) -> CacheLookup:
    """The prompt cache's verdict. It comes before the router: an exact hit costs no encode.
    Its key holds the requested name (model, tier or auto), which with the prompt determines
    the route (but for session stickiness, which lifts a tier and is keyed by the caller's key:
    a team-scoped hit may come from another key's tier). A `variant` keeps apart requests
    that differ only in what their translation leaves out (gateway/native.py)."""
    return await gateway.cache.lookup(
        key.team,
        f"{chat.model}#{variant}" if variant else chat.model,
        chat,
        headers,
        embedding=await _embedding(gateway, key.team, messages),
    )


async def _embedding(gateway: Gateway, team: str, messages: list[dict[str, Any]]) -> Any | None:
    """The router's embedding of the prompt, for the semantic cache tier of teams that use it.

    The router keeps the embeddings it just computed for the estimate, so this is a lookup,
    not a second encode.
    """
    if gateway.router is None or not gateway.cache.semantic_enabled(team):
        return None
    text = prompt_from_messages(messages)
    return (await asyncio.to_thread(gateway.router.embed_batch, [text]))[0]


async def estimate(gateway: Gateway, messages: list[dict[str, Any]]) -> Estimate | None:
    """The router's estimate of the prompt; a router failure is logged, never fatal."""
    if gateway.estimator is None:
        return None
    try:
        return await gateway.estimator.estimate(prompt_from_messages(messages))
    except Exception:
        log.exception("the router failed; routing this request without an estimate")
        return None


async def estimate_can_wait(
    gateway: Gateway, key: ApiKey, chat: ChatRequest, n_prompt_tokens: int, team: TeamContext
) -> bool:
    """Whether nothing before the upstream call reads the estimate, so that it may run beside
    the call: the decision does not (decision_reads_estimate) and the hold does not either,
    the team and key having no budget (a hold is the estimate's p90 tokens)."""
    if gateway.estimator is None:
        return False
    if decision_reads_estimate(gateway.policy, gateway.catalog, chat, n_prompt_tokens, team):
        return False
    return not await gateway.ledger.budgets_for(key.team, key.id)


def decision_reads_estimate(
    policy: PolicyEngine,
    catalog: Catalog,
    chat: ChatRequest,
    n_prompt_tokens: int,
    team: TeamContext,
) -> bool:
    """Whether the policy's decision could differ with and without an estimate.

    It reads one (policies/engine.py) for `auto`, for a tier's pool (its admission and cost
    ranking read p90 tokens), for a reasoning model's effort, for a context window that p90
    tokens might overflow, and once a soft budget moves a pinned model down to a tier. A pinned
    model past none of these is served the same either way. False positives only cost time.
    """
    deployment = catalog.get(chat.model)
    if deployment is None:
        return True
    caps = deployment.capabilities
    if caps.reasoning and policy.spec.reasoning_effort:
        return True
    max_output = chat.max_completion_tokens or chat.max_tokens
    # With an estimate the output is min(p90, max_output): it fits wherever max_output fits.
    if caps.context_window is not None and (
        not max_output or n_prompt_tokens + max_output > caps.context_window
    ):
        return True
    soft = policy.spec.soft_budget
    capped = (
        soft is not None and team.budget_used is not None and team.budget_used >= soft.threshold
    )
    return capped or bool(team.soft_budgets)


async def team_context(gateway: Gateway, key: ApiKey) -> TeamContext:
    """The team as the policy sees it. Its budget share is read (a counter read) only when the
    policy caps tiers on it, and its `mode: soft` budgets past their `soft_at_percent` only
    when the team or key has such a budget."""
    used = None
    if gateway.policy.spec.soft_budget is not None:
        used = await gateway.ledger.budget_used(key.team, key.id)
    soft = await gateway.ledger.budget_state(key.team, key.id)
    return TeamContext(key.team, budget_used=used, soft_budgets=soft.soft_exceeded)


def conversation(
    gateway: Gateway, key: ApiKey, chat: ChatRequest, messages: list[dict[str, Any]]
) -> Conversation | None:
    """The conversation an `auto` or tier request starts or continues, when stickiness is on;
    None for a pinned model (pinned anyway)."""
    if not gateway.stickiness.enabled or gateway.catalog.get(chat.model) is not None:
        return None
    if chat.model != AUTO and chat.model not in gateway.policy.tiers:
        return None
    return conversation_of(key.id, messages)


async def sticky_floor(
    gateway: Gateway, key: ApiKey, talk: Conversation | None
) -> TierFloor | None:
    """The floor of a continuing conversation: the highest tier that served it within the TTL.
    A tier the key may not reach by `auto` or by name is no floor (its permissions win)."""
    if talk is None or not talk.continuing:
        return None
    served = await gateway.stickiness.highest(talk)
    if served is None or not key.may_use(AUTO, served.tier):
        return None
    return served.floor()


async def remember_tier(gateway: Gateway, talk: Conversation | None, decision: Decision) -> None:
    """Once a request is served: its conversation's floor for the next turns. The tier the
    policy chose, not a fallback's: an outage upstream says nothing about the conversation.
    The lowest tier is not written: as a floor it lifts nothing, and most traffic is served there
    (a Redis write saved per such request)."""
    tiers = gateway.policy.tiers
    if talk is None or decision.tier is None or (tiers and decision.tier == tiers[0]):
        return
    await gateway.stickiness.remember(talk, decision.tier)


def decide(
    policy: PolicyEngine,
    key: ApiKey,
    chat: ChatRequest,
    messages: list[dict[str, Any]],
    n_prompt_tokens: int,
    estimate: Estimate | None,
    team: TeamContext | None = None,
    floor: TierFloor | None = None,
    states: Mapping[str, DeploymentState] | None = None,
    latency: RequestedClass | None = None,
) -> Decision:
    """The policy's decision for the request, its refusals as 404, 403 or 400 on `model`;
    `states`: the local backend's health and load of its deployments, and the deployments
    breaking their latency objective; `latency`: the class the caller named."""
    routing = RoutingRequest(
        model=chat.model,
        prompt_tokens=n_prompt_tokens,
        max_output_tokens=chat.max_completion_tokens or chat.max_tokens,
        needs_tools=bool(chat.tools or chat.functions),
        needs_vision=_has_images(messages),
        needs_json_schema=chat.response_format is not None
        and chat.response_format.type == "json_schema",
        floor=floor,
        latency_class=latency.latency_class if latency is not None else None,
        latency_source=latency.source if latency is not None else "",
    )
    try:
        decision = policy.decide(routing, estimate, team or TeamContext(name=key.team), states)
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


def deployment_states(gateway: Gateway) -> Mapping[str, DeploymentState] | None:
    """What the policy must know of the deployments now: the local backend's health and load,
    and which break their tier's latency objective."""
    states = gateway.local.states() if gateway.local is not None else None
    return gateway.latency.states(states) if gateway.latency is not None else states


async def hold(
    gateway: Gateway,
    key: ApiKey,
    chat: ChatRequest,
    decision: Decision,
    call: Call,
    n_prompt_tokens: int,
) -> Hold | None:
    """Reserve the request against the team's and key's budgets and limits (429 past them).

    The hold is the prompt as `decide` counted it plus what the router predicts (p90 output
    tokens, the deployment's own where the artifact has them), not the worst case.
    """
    budget = deployment_budget(gateway, call.estimate, decision.deployment.name)
    predicted = budget.token_budget_p90 if budget else None
    return await reserve_request(
        gateway.ledger, key.team, key.id, chat, decision.deployment, n_prompt_tokens, predicted
    )


def deployment_budget(
    gateway: Gateway, estimate: Estimate | None, deployment: str
) -> Estimate | None:
    """The estimate with the deployment's own token budgets where the router artifact has them
    (`tune --spend-log`); the spend log and the headers keep the heads' (the refit's input)."""
    if estimate is None or gateway.router is None:
        return estimate
    return gateway.router.budget_for(estimate, deployment)


async def hold_cache_hit(gateway: Gateway, key: ApiKey) -> Hold | None:
    """A hit costs nothing upstream but still counts against request-rate limits."""
    return await reserve_cache_hit(gateway.ledger, key.team, key.id)
