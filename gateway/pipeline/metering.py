"""The ledger as the pipeline uses it: a chat request's hold before the call, its charge after."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from gateway.schemas import ChatRequest
from gateway.store import SpendRecord, to_picousd
from ledger.budgets import Amounts
from ledger.ledger import Hold, Ledger, hold_amounts, output_token_bound
from policies import Deployment

log = logging.getLogger("rightsize.ledger")


async def reserve_request(
    ledger: Ledger,
    team: str,
    key_id: str,
    chat: ChatRequest,
    deployment: Deployment,
    prompt_tokens: int,
    predicted_output_tokens: int | None = None,
    *,
    batch_ttl_s: float | None = None,
) -> Hold | None:
    """Hold the request's predicted cost, or None when its team and key have no budget.
    `batch_ttl_s`: a batch line's, at the deployment's batch price, held that long.

    `prompt_tokens` is the count the routing decision used (gateway.tokens.prompt_tokens), so
    a prompt is tokenised once per request; the prediction is the router's p90 output tokens
    for the prompt, when there is an estimate.
    """
    if not await ledger.budgets_for(team, key_id):
        return None
    output = output_token_bound(
        predicted=predicted_output_tokens,
        max_tokens=chat.max_completion_tokens or chat.max_tokens,
        context_window=deployment.capabilities.context_window,
        prompt_tokens=prompt_tokens,
        default_cap=ledger.settings.default_max_output_tokens,
    )
    price = deployment.price if batch_ttl_s is None else deployment.batch_rate
    amounts = hold_amounts(price, prompt_tokens, output * (chat.n or 1))
    return await ledger.reserve(team, key_id, amounts, ttl_s=batch_ttl_s)


async def reserve_embedding(
    ledger: Ledger, team: str, key_id: str, deployment: Deployment, input_tokens: int
) -> Hold | None:
    """Hold an embeddings request: its input tokens at the model's price (no output tokens)."""
    if not await ledger.budgets_for(team, key_id):
        return None
    return await ledger.reserve(team, key_id, hold_amounts(deployment.price, input_tokens, 0))


async def reserve_cache_hit(ledger: Ledger, team: str, key_id: str) -> Hold | None:
    """A prompt-cache hit is one request against the limits, at no cost and no tokens."""
    return await ledger.reserve(team, key_id, Amounts(0, 0, 1))


async def settle_request(ledger: Ledger, hold: Hold | None, record: SpendRecord) -> None:
    """Charge what the spend log records for the request; on failure that is 0 (a release)."""
    if hold is None:
        return
    await _settle(ledger, hold, record)


async def send_settlement(
    ledger: Ledger, hold: Hold | None, record: SpendRecord
) -> Awaitable[None] | None:
    """settle_request, returning once the settlement is sent where the counters apply calls in
    order: the awaitable (never raising) ends it, after the answer has gone out."""
    if hold is None:
        return None
    return await ledger.settle_sent(_settle(ledger, hold, record))


async def _settle(ledger: Ledger, hold: Hold, record: SpendRecord) -> None:
    tokens = 0 if record.cache_hit else record.prompt_tokens + record.completion_tokens
    actual = Amounts(to_picousd(record.cost_usd), tokens, 1)
    try:
        await ledger.settle(hold, actual)
    except Exception:
        # The spend log still gets the row; the hold expires and a rebuild restores counters.
        log.exception("ledger settle failed for request %s", record.request_id)
