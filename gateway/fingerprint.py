"""A short hash of the routing configuration in force, computed once at start.

The spend log records it beside each estimate, so rows routed under one catalog, policy or
router setting can be told from another's (a changed threshold, a new model, another runtime).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

from gateway.settings import RouterSettings, StickinessSettings
from policies import Catalog, PolicySpec


def config_hash(
    catalog: Catalog,
    policy: PolicySpec,
    default: str | None,
    router: RouterSettings,
    stickiness: StickinessSettings | None = None,
) -> str:
    """16 hex digits over the deployments, the policy, `auto`'s default, the router settings and
    session stickiness (it lifts tiers).

    Secrets are never in it: deployments name their keys' environment variables only. Batching
    settings are left out: they change latency, not a decision.
    """
    described = {
        "deployments": [dataclasses.asdict(d) for d in catalog.deployments],
        "policy": policy.model_dump(mode="json"),
        "default": default,
        "router": router.model_dump(mode="json", include={"enabled", "artifact", "runtime"}),
    }
    if stickiness is not None:
        described["stickiness"] = stickiness.model_dump(mode="json", include={"enabled", "ttl_s"})
    text = orjson.dumps(described, default=_plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _plain(value: Any) -> Any:
    # Decimals (prices) and pydantic models (capabilities) inside the deployments.
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)
