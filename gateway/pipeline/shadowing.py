"""The pipeline's side of shadow evaluation: draw a served `auto` request, queue its job."""

from __future__ import annotations

from typing import Any

from gateway.pipeline.call import Call
from gateway.shadow import ShadowJob
from gateway.state import Gateway
from policies import AUTO
from router import prompt_from_messages


def offer_shadow(gateway: Gateway, call: Call, payload: dict[str, Any], text: str) -> None:
    """Once the client has its whole answer: queue a shadow job when the request is drawn.

    Only a routed (`auto`) chat completion that succeeded is eligible; the draw and the queueing
    are in memory and never wait (a full queue drops the job)."""
    shadow, record = gateway.shadow, call.record
    if shadow is None or record.requested_model != AUTO or record.status != 200:
        return
    if record.team is None or record.tier is None or record.deployment is None:
        return
    spec = shadow.sample(record.team, record.tier, gateway.policy.tiers)
    if spec is None:
        return
    messages = payload["messages"]
    estimate = call.estimate
    shadow.offer(
        ShadowJob(
            request_id=record.request_id,
            team=record.team,
            spec=spec,
            messages=messages,
            payload=payload,
            prompt_text=prompt_from_messages(messages),
            served_tier=record.tier,
            served_deployment=record.deployment,
            served_text=text,
            served_completion_tokens=record.completion_tokens,
            reasoning_demand=record.reasoning_demand,
            category=estimate.category if estimate is not None else None,
            router_artifact=record.router_artifact,
            gateway=gateway,
        )
    )
