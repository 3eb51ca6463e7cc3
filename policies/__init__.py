"""Routing policies: the model catalog with prices, the policy file, and the decision engine."""

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
from policies.config import PolicyError, PolicySpec, TierSpec, validate_policy
from policies.decision import (
    AUTO,
    Candidate,
    Decision,
    NotAllowed,
    Refusal,
    RoutingRequest,
    TierFloor,
    UnknownModel,
)
from policies.engine import DeploymentState, PolicyEngine, TeamContext
from policies.local_cost import GpuCost, Pricing, Throughput, ThroughputWindow, throughput

__all__ = [
    "AUTO",
    "Candidate",
    "Capabilities",
    "Catalog",
    "CatalogError",
    "Decision",
    "Deployment",
    "DeploymentState",
    "GpuCost",
    "ModelInfo",
    "ModelInfoLookup",
    "ModelSpec",
    "NotAllowed",
    "PolicyEngine",
    "PolicyError",
    "PolicySpec",
    "Price",
    "Pricing",
    "Refusal",
    "RoutingRequest",
    "TeamContext",
    "Throughput",
    "ThroughputWindow",
    "TierFloor",
    "TierSpec",
    "TokenPrice",
    "UnknownModel",
    "Usage",
    "throughput",
    "validate_policy",
]
