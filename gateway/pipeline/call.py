"""One request in flight: its spend record, and the writing of it at the end."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.pipeline.metering import send_settlement, settle_request
from gateway.request_log import log_request
from gateway.state import Gateway
from gateway.store import SpendRecord
from gateway.tracing import NO_SPAN, RequestTrace
from ledger.ledger import Hold
from policies import Usage
from policies.params import ParamFit
from router import Estimate

log = logging.getLogger("rightsize.chat")


@dataclass(slots=True)
class Call:
    """One request in flight: what the spend log will say about it."""

    record: SpendRecord
    started: float = field(default_factory=time.perf_counter)
    estimate: Estimate | None = None
    hold: Hold | None = None  # the ledger's reservation, settled wherever the record is written
    cache: str | None = None  # the prompt cache's verdict: hit, miss, bypass; None: not asked
    first_token_ms: float | None = None  # a stream: its first chunk, from the request's arrival
    rules: tuple[str, ...] = ()  # the policy rules that made the decision (Decision.rules)
    fit: ParamFit | None = None  # the payload as fitted to the deployment last attempted
    trace: RequestTrace | None = None  # None: tracing is off (gateway/tracing.py)
    # The served deployment's own call (the last attempt): when it started and, streamed, when
    # its first chunk came; the latency objectives' samples (gateway/latency.py).
    attempt_started: float | None = None
    attempt_first_token_ms: float | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def finish(
    gateway: Gateway, call: Call, *, settle_after: bool = False
) -> Awaitable[None] | None:
    """Write the spend row, then settle the hold: the row is journaled before the ledger
    moves, so a worker killed in between loses no paid spend.

    `settle_after`: return once the settlement is sent, with what ends it (to await after the
    answer has gone out: Ledger.settle_sent), where the ledger's counters allow; else None."""
    observe_latency(gateway, call)
    settling = None
    try:
        with span(call, "rightsize.settle"):
            note_routing(gateway, call)
            gateway.spend.record(call.record)
            if settle_after:
                settling = await send_settlement(gateway.ledger, call.hold, call.record)
            else:
                await settle_request(gateway.ledger, call.hold, call.record)
    finally:
        if call.trace is not None:
            call.trace.end(call.record, call.cache)
    # Counted and logged from the record as written, in this one place every request ends;
    # after the settlement, and never the request's failure (a full disk under the metrics'
    # multiprocess files).
    try:
        if gateway.metrics is not None:
            gateway.metrics.observe(
                call.record,
                held=call.hold is not None,
                first_token_ms=call.first_token_ms,
                rules=call.rules,
            )
        if gateway.log_requests:
            log_request(call.record, call.cache)
    except Exception:
        log.exception("request %s: metrics or request log failed", call.record.request_id)
    return settling


def observe_latency(gateway: Gateway, call: Call) -> None:
    """A served request's latency, for its deployment's objective: the last attempt's call
    from its start to its end (a stream's end), and a stream's first chunk. Failed attempts
    are the fallbacks' business, not samples."""
    record = call.record
    if gateway.latency is None or call.attempt_started is None or record.deployment is None:
        return
    if record.status != 200 or record.cache_hit:
        return
    total_ms = (time.perf_counter() - call.attempt_started) * 1000
    gateway.latency.observe(record.deployment, call.attempt_first_token_ms, total_ms)


def span(call: Call, name: str, *, client: bool = False) -> AbstractContextManager[Any]:
    """A child span of the request's trace; the shared no-op while tracing is off."""
    return NO_SPAN if call.trace is None else call.trace.child(name, client=client)


def note_routing(gateway: Gateway, call: Call) -> None:
    """Put the router's estimate, the artifact that made it and the configuration in force on
    the record, for scoring the router on logged traffic. A cache hit ran no router: its
    columns stay empty."""
    record = call.record
    if record.cache_hit:
        return
    if record.deployment is not None:  # a decision was made under this configuration
        record.config_hash = gateway.config_hash
    if call.estimate is not None:
        # Plain numbers: the heads may hand out numpy scalars, which the row fitting refuses.
        record.reasoning_demand = float(call.estimate.reasoning_demand)
        record.token_budget_p50 = int(call.estimate.token_budget_p50)
        record.token_budget_p90 = int(call.estimate.token_budget_p90)
        record.category = call.estimate.category
        record.router_artifact = gateway.router.artifact_id if gateway.router else None


def charge(call: Call, cost: Decimal, usage: Usage) -> Decimal:
    call.record.prompt_tokens = usage.prompt_tokens
    call.record.completion_tokens = usage.completion_tokens
    call.record.cached_tokens = usage.cached_tokens
    call.record.cache_creation_tokens = usage.cache_creation_tokens
    call.record.cost_usd = cost
    return cost


def routing_headers(call: Call) -> dict[str, str]:
    """The x-rightsize-* headers every answer carries, whichever API it arrived on."""
    headers = {
        "x-request-id": call.record.request_id,
        "x-rightsize-model": call.record.deployment or "",
        "x-rightsize-tier": call.record.tier or "",
        "x-rightsize-cache": "miss",
        "x-rightsize-overhead-ms": f"{call.record.overhead_ms or 0:.3f}",
    }
    if call.fit is not None and call.fit.dropped:
        headers["x-rightsize-dropped-params"] = ",".join(call.fit.dropped)
    if call.fit is not None and call.fit.translated:
        headers["x-rightsize-translated-params"] = ",".join(
            f"{sent}={upstream}" for sent, upstream in call.fit.translated
        )
    if call.estimate is not None:
        headers["x-rightsize-demand"] = f"{call.estimate.reasoning_demand:.3f}"
        headers["x-rightsize-token-budget"] = (
            f"{call.estimate.token_budget_p50}/{call.estimate.token_budget_p90}"
        )
    return headers


def usage_payload(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": _details(usage),
    }


def _details(usage: Usage) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_creation_tokens:
        # Anthropic's cache writes, under litellm's names: usage_from reads them back.
        details["cache_creation_tokens"] = usage.cache_creation_tokens
        if usage.cache_creation_1h_tokens:
            details["cache_creation_token_details"] = {
                "ephemeral_5m_input_tokens": usage.cache_creation_tokens
                - usage.cache_creation_1h_tokens,
                "ephemeral_1h_input_tokens": usage.cache_creation_1h_tokens,
            }
    return details


def usd(cost: Decimal) -> str:
    return format(cost.normalize(), "f") if cost else "0"
