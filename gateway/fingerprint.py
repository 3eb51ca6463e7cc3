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
from local_backend import LocalBackendSettings
from policies import Catalog, Deployment, PolicySpec


def config_hash(
    catalog: Catalog,
    policy: PolicySpec,
    default: str | None,
    router: RouterSettings,
    stickiness: StickinessSettings | None = None,
    local_backend: LocalBackendSettings | None = None,
) -> str:
    """16 hex digits over the deployments, the policy, `auto`'s default, the router settings and
    session stickiness (it lifts tiers).

    Secrets are never in it: deployments name their keys' environment variables only. Batching
    settings are left out: they change latency, not a decision; so is `policy.shadow`.
    `local_backend` (given when a model has an engine): its spill thresholds, which move
    requests between tiers.
    """
    described = {
        "deployments": [_described(d) for d in catalog.deployments],
        # Shadow evaluation decides no route (it runs after the answer): left out.
        "policy": _policy(policy),
        "default": default,
        "router": router.model_dump(mode="json", include={"enabled", "artifact", "runtime"}),
    }
    if stickiness is not None:
        described["stickiness"] = stickiness.model_dump(mode="json", include={"enabled", "ttl_s"})
    if local_backend is not None:
        described["local_backend"] = local_backend.model_dump(mode="json", include={"spill"})
    text = orjson.dumps(described, default=_plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _policy(policy: PolicySpec) -> dict[str, Any]:
    """The policy's fields, less those added later at their default (latency classes and
    objectives): a configuration that sets none of them keeps its old hash."""
    values: dict[str, Any] = policy.model_dump(mode="json", exclude={"shadow"})
    if values.get("latency_class") == "interactive":
        del values["latency_class"]
    for tier in values.get("tiers", ()):
        if tier.get("latency") is None:
            tier.pop("latency", None)
    for rule in values.get("teams", {}).values():
        if rule.get("latency_class") is None:
            rule.pop("latency_class", None)
    return values


def _described(deployment: Deployment) -> dict[str, Any]:
    """The deployment's fields, less those at their default: a field added with a default
    (a local engine's) leaves every configuration that does not set it with its old hash."""
    values = dataclasses.asdict(deployment)
    # How the price was found (configured, litellm's map, GPU-hour, none) adds nothing the
    # price and gpu_cost do not already say.
    del values["pricing"]
    # The batch price (docs/batches.md) prices batch lines; it decides no route.
    values.pop("batch_price", None)
    # Price fields added later (cache writes) are None unless a price sets them.
    values["price"] = {k: v for k, v in values["price"].items() if v is not None}
    # Likewise capabilities.params (the parameters a deployment takes), None unless configured.
    capabilities = deployment.capabilities.model_dump(mode="json")
    if capabilities.get("params") is None:
        capabilities.pop("params", None)
    values["capabilities"] = capabilities
    for field in dataclasses.fields(deployment):
        if field.name not in values:
            continue
        if field.default is not dataclasses.MISSING and values[field.name] == field.default:
            del values[field.name]
    return values


def _plain(value: Any) -> Any:
    # Decimals (prices) and pydantic models (capabilities) inside the deployments.
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)
