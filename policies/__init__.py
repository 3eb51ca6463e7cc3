"""Routing policies, the model catalog and prices."""

from policies.catalog import (
    Capabilities,
    Catalog,
    CatalogError,
    Deployment,
    ModelInfo,
    ModelInfoLookup,
    ModelSpec,
    Price,
    TokenPrice,
    Usage,
)
from policies.pinned import AUTO, Decision, PinnedPolicy, Policy, RoutingRequest, UnknownModel

__all__ = [
    "AUTO",
    "Capabilities",
    "Catalog",
    "CatalogError",
    "Decision",
    "Deployment",
    "ModelInfo",
    "ModelInfoLookup",
    "ModelSpec",
    "PinnedPolicy",
    "Policy",
    "Price",
    "RoutingRequest",
    "TokenPrice",
    "UnknownModel",
    "Usage",
]
