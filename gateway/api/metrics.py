"""GET /metrics: the Prometheus text of gateway.metrics, for a scraper with the right key."""

from __future__ import annotations

import asyncio
import hmac
import logging

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import bearer_token
from gateway.errors import AuthenticationFailed
from gateway.http import error_response
from gateway.metrics import CONTENT_TYPE
from gateway.state import Gateway, gateway_of

log = logging.getLogger("rightsize.metrics")


async def metrics(request: Request) -> Response:
    """Every series, summed over the workers; 401 without the master or scrape key unless
    server.metrics_public."""
    gateway = gateway_of(request)
    assert gateway.metrics is not None  # mounted only when server.metrics is on
    if not gateway.settings.server.metrics_public:
        try:
            check_scrape_key(gateway, bearer_token(request.headers))
        except AuthenticationFailed as exc:
            return error_response(exc)
    if gateway.local is not None:
        gateway.metrics.local_engines(gateway.local.report())
    if gateway.latency is not None:
        gateway.metrics.latency_objectives(gateway.latency.report())
    gateway.metrics.budgets_used(await _budgets_used(gateway))
    # Multiprocess mode reads every worker's files: off the event loop.
    body = await asyncio.to_thread(gateway.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE)


async def _budgets_used(gateway: Gateway) -> list[tuple[str, float]]:
    """Each team's budget share, one counter read per team; none when the store or the
    counters cannot be read (the scrape still answers, the rest of the series are ours)."""
    try:
        teams = await gateway.store.list_teams()
        shares = [(t.name, await gateway.ledger.budget_used(t.name, "")) for t in teams]
    except Exception as exc:
        log.warning("metrics: budget shares not read: %r", exc)
        return []
    return [(team, share) for team, share in shares if share is not None]


def check_scrape_key(gateway: Gateway, presented: str | None) -> None:
    """The master key or the scrape key (auth.metrics_key_env) reads the metrics."""
    accepted = [k for k in (gateway.master_key, gateway.metrics_key) if k]
    if not accepted:
        auth = gateway.settings.auth
        raise AuthenticationFailed(
            f"/metrics needs a key: set {auth.metrics_key_env} (or {auth.master_key_env}), "
            "or server.metrics_public: true",
            code="metrics_disabled",
        )
    given = (presented or "").encode()
    # Every key compared, in constant time: which one matched is not timed either.
    matched = [hmac.compare_digest(given, key.encode()) for key in accepted]
    if not presented or not any(matched):
        raise AuthenticationFailed("Incorrect metrics key", code="invalid_metrics_key")
