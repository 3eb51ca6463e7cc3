"""The routing seam and its first policy: honour the model the client names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from policies.catalog import Catalog, Deployment

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a policy needs to know about a request."""

    model: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The deployment a request goes to, and why."""

    deployment: Deployment
    tier: str | None
    reason: str


class UnknownModel(LookupError):
    """The requested name is neither `auto`, a tier nor a configured model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model!r} does not exist")
        self.model = model


class Policy(Protocol):
    """Maps a request to a decision; pure and cheap (no I/O)."""

    def decide(self, request: RoutingRequest) -> Decision: ...

    def names(self) -> list[str]:
        """Every name a client may send as `model`."""
        ...


class PinnedPolicy:
    """A configured model name or tier resolves to its deployment; `auto` to a default."""

    def __init__(self, catalog: Catalog, default: str) -> None:
        self._catalog = catalog
        self._default = default

    def decide(self, request: RoutingRequest) -> Decision:
        name = request.model
        if name == AUTO:
            decision = self._resolve(self._default)
            return Decision(
                decision.deployment, decision.tier, f"auto -> default {self._default!r}"
            )
        return self._resolve(name)

    def names(self) -> list[str]:
        return [AUTO, *self._catalog.tier_names, *(d.name for d in self._catalog.deployments)]

    def _resolve(self, name: str) -> Decision:
        deployment = self._catalog.get(name)
        if deployment is not None:
            return Decision(deployment, deployment.tier, f"pinned model {name!r}")
        tier = self._catalog.tier(name)
        if tier:
            return Decision(tier[0], name, f"tier {name!r} -> first deployment {tier[0].name!r}")
        raise UnknownModel(name)
