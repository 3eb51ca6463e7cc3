"""The routing policy as written in the configuration file, and its validation."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Effort = Literal["minimal", "low", "medium", "high"]
# How soon a request's answer is needed (issue 26); `interactive` unless something says otherwise.
LatencyClass = Literal["interactive", "batch", "background"]
LATENCY_CLASSES: tuple[str, ...] = ("interactive", "batch", "background")
INTERACTIVE = "interactive"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyObjective(_Strict):
    """A tier's latency objective, judged per deployment on the gateway's own measurements.

    A deployment breaks it when the p95 of its last `window` requests (at least `min_samples`)
    is above an objective; it is then avoided by interactive traffic, and lets one request
    through every `probe_every_s` (half-open). It recovers once at least `min_dwell_s` have
    passed and `recover_samples` fresh requests have a p95 at most `recover_ratio` x objective.
    """

    ttft_p95_ms: float | None = Field(
        default=None, gt=0, description="Time to first token (streams)."
    )
    total_p95_ms: float | None = Field(default=None, gt=0, description="Whole upstream call.")
    recover_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    window: int = Field(default=100, ge=1, le=10_000)
    min_samples: int = Field(default=20, ge=1)
    recover_samples: int = Field(default=5, ge=1)
    min_dwell_s: float = Field(default=30.0, ge=0.0)
    probe_every_s: float = Field(default=5.0, gt=0.0)

    @model_validator(mode="after")
    def _coherent(self) -> LatencyObjective:
        if self.ttft_p95_ms is None and self.total_p95_ms is None:
            raise ValueError("set ttft_p95_ms, total_p95_ms or both")
        if max(self.min_samples, self.recover_samples) > self.window:
            raise ValueError("min_samples and recover_samples must fit in the window")
        return self


class TierSpec(_Strict):
    """A tier: deployments in preference order and the demand from which prompts enter it."""

    name: str
    deployments: list[str] = Field(min_length=1)
    min_demand: float = Field(default=0.0, ge=0.0, le=1.0)
    fallback: str | None = Field(
        default=None, description="Tier to try when every deployment here fails (default: next up)."
    )
    latency: LatencyObjective | None = None


class TeamRule(_Strict):
    """What one team may use."""

    allowed_tiers: list[str] | None = None
    allowed_models: list[str] | None = None
    default_tier: str | None = None
    local_only: bool = False
    # The team's latency class when neither the request's header nor its key nor the team's
    # stored default names one.
    latency_class: LatencyClass | None = None


class SoftBudget(_Strict):
    """Above `threshold` of its budget a team is capped at `cap_tier` before it is blocked."""

    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    cap_tier: str


class EffortStep(_Strict):
    """Prompts with demand below `below` get `effort`; the last step has no bound."""

    below: float | None = Field(default=None, ge=0.0, le=1.0)
    effort: Effort


class Retries(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_ms: int = Field(default=50, ge=0)


class ShadowSpec(_Strict):
    """Shadow evaluation for a team (docs/shadow.md): a sampled `auto` request's other tier is
    called in the background and a judge deployment grades the two answers."""

    enabled: bool = False
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    daily_usd_cap: Decimal = Field(default=Decimal("1"), gt=0)
    budget: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="The named budget (a spend-log team name) the shadow and judge calls are "
        "charged to, capped at daily_usd_cap.",
    )
    light: str | None = Field(default=None, description="The cheaper tier (default: the first).")
    strong: str | None = Field(default=None, description="The stronger tier (default: the last).")
    judge: str | None = Field(default=None, description="The deployment that grades the pair.")
    keep_prompt_text: bool = False
    max_output_tokens: int = Field(default=1024, gt=0)
    judge_max_tokens: int = Field(default=512, gt=0)


class ShadowPolicy(_Strict):
    """The `policy.shadow` section: a default and per-team overrides of its fields."""

    default: ShadowSpec = Field(default_factory=ShadowSpec)
    teams: dict[str, ShadowSpec] = Field(default_factory=dict)
    queue_size: int = Field(default=1000, ge=1, description="Jobs waiting; more are dropped.")
    concurrency: int = Field(default=4, ge=1, le=256)
    seed: int | None = Field(default=None, description="The sampler's seed (tests, replays).")

    def for_team(self, team: str) -> ShadowSpec:
        """The team's settings: the default with the fields the team's entry sets."""
        override = self.teams.get(team)
        if override is None:
            return self.default
        fields = {name: getattr(override, name) for name in override.model_fields_set}
        return self.default.model_copy(update=fields)


class PolicySpec(_Strict):
    """The `policy` section of the configuration file."""

    tiers: list[TierSpec] = Field(default_factory=list)
    selection: Literal["cost", "order"] = Field(
        default="cost",
        description="cost: cheapest expected cost among admissible deployments; order: as listed.",
    )
    default_tier: str | None = None
    latency_class: LatencyClass = Field(
        default="interactive",
        description="Latency class of requests that name none (header, key, team or team rule).",
    )
    teams: dict[str, TeamRule] = Field(default_factory=dict)
    soft_budget: SoftBudget | None = None
    reasoning_effort: list[EffortStep] = Field(
        default_factory=lambda: [
            EffortStep(below=0.3, effort="low"),
            EffortStep(below=0.7, effort="medium"),
            EffortStep(effort="high"),
        ]
    )
    retries: Retries = Field(default_factory=Retries)
    default_output_tokens: int = Field(
        default=512, gt=0, description="Output tokens assumed when neither estimate nor max_tokens."
    )
    shadow: ShadowPolicy = Field(default_factory=ShadowPolicy)


class PolicyError(ValueError):
    """The policy contradicts itself or the catalog; `field` is its dotted location."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_policy(spec: PolicySpec, deployments: set[str], model_tiers: list[str]) -> None:
    """Check references, threshold order and fallback chains; raise PolicyError on the first."""
    names = [t.name for t in spec.tiers]
    if len(set(names)) != len(names):
        raise PolicyError("policy.tiers", "tier names must be unique")
    for i, tier in enumerate(spec.tiers):
        for j, deployment in enumerate(tier.deployments):
            if deployment not in deployments:
                raise PolicyError(
                    f"policy.tiers[{i}].deployments[{j}]",
                    f"unknown deployment {deployment!r} in tier {tier.name!r}",
                )
        if i == 0 and tier.min_demand != 0.0:
            raise PolicyError(f"policy.tiers[{i}].min_demand", "the first tier must start at 0")
        if i > 0 and tier.min_demand <= spec.tiers[i - 1].min_demand:
            raise PolicyError(
                f"policy.tiers[{i}].min_demand",
                "thresholds must increase strictly from one tier to the next",
            )
        if tier.fallback is not None and tier.fallback not in names:
            raise PolicyError(f"policy.tiers[{i}].fallback", f"unknown tier {tier.fallback!r}")
    for i, tier in enumerate(spec.tiers):
        seen = [tier.name]
        current: str | None = tier.name
        while current is not None:
            current = fallback_tier(spec, current)
            if current in seen:
                raise PolicyError(
                    f"policy.tiers[{i}].fallback",
                    "fallback cycle: " + " -> ".join([*seen, current or ""]),
                )
            if current is not None:
                seen.append(current)
    known_tiers = set(names) | set(model_tiers)
    for tier_ref, where in _tier_references(spec):
        if tier_ref not in known_tiers:
            raise PolicyError(where, f"unknown tier {tier_ref!r}")
    for team, rule in spec.teams.items():
        for j, model in enumerate(rule.allowed_models or ()):
            if model not in deployments:
                raise PolicyError(
                    f"policy.teams.{team}.allowed_models[{j}]", f"unknown model {model!r}"
                )
    _validate_shadow(spec, deployments, names or model_tiers)
    steps = spec.reasoning_effort
    for j, step in enumerate(steps):
        last = j == len(steps) - 1
        if (step.below is None) != last:
            raise PolicyError(
                f"policy.reasoning_effort[{j}].below", "only the last step has no upper bound"
            )


def fallback_tier(spec: PolicySpec, tier: str) -> str | None:
    """The tier tried after `tier`: its explicit fallback, else the next one up."""
    names = [t.name for t in spec.tiers]
    if tier not in names:
        return None
    index = names.index(tier)
    explicit = spec.tiers[index].fallback
    if explicit is not None:
        return explicit
    return names[index + 1] if index + 1 < len(names) else None


def _tier_references(spec: PolicySpec) -> list[tuple[str, str]]:
    refs = []
    if spec.default_tier:
        refs.append((spec.default_tier, "policy.default_tier"))
    if spec.soft_budget:
        refs.append((spec.soft_budget.cap_tier, "policy.soft_budget.cap_tier"))
    for team, rule in spec.teams.items():
        for j, tier in enumerate(rule.allowed_tiers or ()):
            refs.append((tier, f"policy.teams.{team}.allowed_tiers[{j}]"))
        if rule.default_tier:
            refs.append((rule.default_tier, f"policy.teams.{team}.default_tier"))
    return refs


def _validate_shadow(spec: PolicySpec, deployments: set[str], tiers: list[str]) -> None:
    """Each enabled shadow setting (the default, and each team's merged over it) must name a
    budget, a judge deployment and two distinct known tiers."""
    shadow = spec.shadow
    entries = [("policy.shadow.default", shadow.default)]
    entries += [(f"policy.shadow.teams.{team}", shadow.for_team(team)) for team in shadow.teams]
    for where, entry in entries:
        if not entry.enabled:
            continue
        if entry.budget is None:
            raise PolicyError(f"{where}.budget", "shadow evaluation needs a named budget")
        if entry.judge is None:
            raise PolicyError(f"{where}.judge", "shadow evaluation needs a judge deployment")
        if entry.judge not in deployments:
            raise PolicyError(f"{where}.judge", f"unknown deployment {entry.judge!r}")
        light, strong = shadow_tiers(entry, tiers)
        for name, tier in (("light", light), ("strong", strong)):
            if tier not in tiers:
                raise PolicyError(f"{where}.{name}", f"unknown tier {tier!r}")
        if light == strong:
            raise PolicyError(f"{where}.strong", "the compared tiers must differ")


def shadow_tiers(entry: ShadowSpec, tiers: Sequence[str]) -> tuple[str, str]:
    """The two tiers a shadow setting compares: as written, else the first and the last."""
    light = entry.light or (tiers[0] if tiers else "")
    strong = entry.strong or (tiers[-1] if tiers else "")
    return light, strong
