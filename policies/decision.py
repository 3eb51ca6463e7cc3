"""The values that cross the policy seam: what is asked, and what was decided and why."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from policies.catalog import Deployment

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class TierFloor:
    """The lowest tier a request may be served from, and why: the tier a continuing
    conversation was last served by (`why` goes into the explanation as it is)."""

    tier: str
    why: str


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a policy needs to know about a request."""

    model: str
    prompt_tokens: int = 0
    max_output_tokens: int | None = None
    needs_tools: bool = False
    needs_vision: bool = False
    needs_json_schema: bool = False
    # Session stickiness (the gateway's): `auto` and tier requests are served no lower.
    floor: TierFloor | None = None
    # The latency class the caller asked for and where it came from (`x-rightsize-latency
    # header`, `key default`, `team default`); None: the policy's team rule or default decides.
    latency_class: str | None = None
    latency_source: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment the engine looked at, and why it was kept or dropped."""

    deployment: str
    tier: str | None
    kept: bool
    why: str
    expected_cost: Decimal | None = None


# Every rule a decision may name (Decision.rules): a bounded set, fit for a metrics label.
RULES = (
    "pinned",  # a configured model asked for by name
    "tier",  # a tier asked for by name
    "demand",  # auto: the router's demand picked the tier
    "default",  # auto without an estimate or tiers: the default tier
    "team_tiers",  # the team's allowed tiers moved or kept the tier
    "sticky",  # the conversation's floor lifted the tier
    "soft_budget",  # a soft budget capped the tier
    "spill",  # a local engine past its load threshold was passed over
    "latency_class",  # a latency class other than the default interactive one
    "latency_objective",  # a deployment breaking its tier's latency objective was passed over
    "next_tier",  # nothing admissible in a tier: its fallback tier
    "reasoning_effort",  # the policy set a reasoning effort
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The deployment a request goes to, the ones to fall back on, and why."""

    deployment: Deployment
    tier: str | None
    reason: str
    fallbacks: tuple[Deployment, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    reasoning_effort: str | None = None
    expected_cost: Decimal | None = None
    # The rules that acted (RULES), in order; `reason` says the same in words.
    rules: tuple[str, ...] = ()
    latency_class: str = "interactive"

    def attempts(self) -> tuple[Deployment, ...]:
        """The deployments to try, in order."""
        return (self.deployment, *self.fallbacks)


class UnknownModel(LookupError):
    """The requested name is neither `auto`, a tier nor a configured model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model!r} does not exist")
        self.model = model


class Refusal(Exception):
    """No deployment may serve the request; `status` is the HTTP status to answer with."""

    def __init__(
        self, status: int, code: str, message: str, candidates: tuple[Candidate, ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.candidates = candidates


class NotAllowed(Refusal):
    """The team or key may not use what was asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(403, "model_not_allowed", message)
