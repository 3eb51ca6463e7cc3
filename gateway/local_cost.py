"""Request-time cost of local deployments priced by the GPU-hour, from measured throughput."""

from __future__ import annotations

from decimal import Decimal

from gateway.store import SpendRecord
from policies import Catalog, Deployment, ThroughputWindow, Usage


class LocalCostMeter:
    """One throughput window per GPU-hour-priced deployment, fed by the requests it serves.

    Each process measures only its own requests: with several workers on one engine the
    request-time price runs high; the cost report recomputes it from the whole spend log.
    """

    def __init__(self, catalog: Catalog | None = None) -> None:
        deployments = catalog.deployments if catalog is not None else []
        self._windows = {
            d.name: ThroughputWindow(d.gpu_cost) for d in deployments if d.gpu_cost is not None
        }

    def cost(self, deployment: Deployment, usage: Usage, record: SpendRecord) -> Decimal:
        """The call's cost; a GPU-hour deployment's call joins its window first."""
        window = self._windows.get(deployment.name)
        if window is None:
            return deployment.price.cost(usage)
        start = record.created_at.timestamp()
        end = start + (record.upstream_ms or 0) / 1000
        window.observe(start, end, usage.total_tokens)
        return usage.total_tokens * window.usd_per_token(end)
