"""The decision engine: request + router estimate + team + load -> a deployment, explained.

`decide` is pure and cheap: no I/O, only the catalog, the policy and the values passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from policies.catalog import Catalog, Deployment, Usage
from policies.config import INTERACTIVE, PolicySpec, TeamRule, fallback_tier
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
from router import Estimate

_NO_RULE = TeamRule()
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """Health and load of a deployment as the backends last reported them."""

    healthy: bool = True
    load: float = 0.0  # 0 idle .. 1 saturated
    # Why new requests leave this deployment for the next tier (local_backend's spill-over,
    # with hysteresis); None: not spilling.
    spill: str | None = None
    age_s: float | None = None  # age of the load reading; None: no reading (load unknown)
    # Why interactive requests avoid this deployment: it breaks its tier's latency objective
    # (the gateway's measurements, with hysteresis); None: within it, or not measured.
    slow: str | None = None


@dataclass(frozen=True, slots=True)
class TeamContext:
    """The calling team, how much of its budget is used (0..1, None if no budget), and its
    `mode: soft` budgets past their `soft_at_percent` (the ledger's BudgetState)."""

    name: str
    budget_used: float | None = None
    soft_budgets: tuple[str, ...] = ()


@dataclass(slots=True)
class _Trace:
    steps: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    # Spilled deployments (local_backend's load past its threshold): after every other
    # admissible deployment of every tier walked, so new requests go to the next tier.
    spilled: list[Deployment] = field(default_factory=list)
    # The rules that acted, as bounded names (RULES), in order: for metrics and reports.
    rules: list[str] = field(default_factory=list)
    latency_class: str = INTERACTIVE

    def note(self, rule: str, step: str) -> None:
        """A step of the explanation, made by `rule`."""
        if rule not in self.rules:
            self.rules.append(rule)
        self.steps.append(step)


class PolicyEngine:
    """Applies the policy rules; every rule that acts leaves a line in the explanation."""

    def __init__(self, catalog: Catalog, spec: PolicySpec, default: str | None) -> None:
        self._catalog = catalog
        self._spec = spec
        self._default = default
        self._demand_routing = bool(spec.tiers)
        self._tiers: dict[str, list[Deployment]]
        if spec.tiers:
            # validate_policy has checked that every named deployment exists.
            self._tiers = {
                t.name: [d for d in map(catalog.get, t.deployments) if d is not None]
                for t in spec.tiers
            }
            self._thresholds = [(t.min_demand, t.name) for t in spec.tiers]
        else:
            self._tiers = {name: catalog.tier(name) for name in catalog.tier_names}
            self._thresholds = []
        self._tier_of = {d.name: tier for tier, ds in self._tiers.items() for d in ds if d}
        self._next_tier = {t.name: fallback_tier(spec, t.name) for t in spec.tiers}
        self._order = list(self._tiers)

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tier names, cheapest first (the order in which a floor or a cap compares them)."""
        return tuple(self._order)

    def names(self) -> list[str]:
        """Every name a request may send as `model`, each once (a tier may share a name with a
        deployment; the name then pins the deployment: _resolve)."""
        return list(
            dict.fromkeys([AUTO, *self._order, *(d.name for d in self._catalog.deployments)])
        )

    def tier_deployments(self, tier: str) -> list[Deployment]:
        """The tier's deployments in preference order (none for an unknown tier)."""
        return list(self._tiers.get(tier, ()))

    def tier_of(self, deployment: str) -> str | None:
        return self._tier_of.get(deployment)

    def decide(
        self,
        request: RoutingRequest,
        estimate: Estimate | None = None,
        team: TeamContext | None = None,
        states: Mapping[str, DeploymentState] | None = None,
    ) -> Decision:
        """Pick a deployment and fallbacks; raise Refusal or UnknownModel when none may serve."""
        trace = _Trace()
        rule = self._spec.teams.get(team.name, _NO_RULE) if team else _NO_RULE
        trace.latency_class = self._latency_class(request, rule, trace)
        pinned, tier = self._resolve(request.model, estimate, rule, trace)
        if pinned is None and request.model == AUTO:
            # Only `auto` is lifted: a tier asked for by name is what the client chose.
            tier = self._sticky(tier, request.floor, rule, trace)
        capped = self._soft_cap(tier, team, trace)
        usable = self._usable_tiers(rule, capped if capped != tier else None)
        tier = capped
        if pinned is not None:
            self._check_allowed(pinned, rule)
            if tier != self._tier_of.get(pinned.name):
                pinned = None  # the soft budget moved a pinned model down to the cap tier
        output_tokens = self._output_tokens(request, estimate)
        chosen: list[Deployment] = []
        if pinned is not None:
            # A pinned model is never swapped for another, not even on failure.
            chosen = self._admit([pinned], tier, request, output_tokens, rule, states or {}, trace)
        visited: list[str] = []
        current: str | None = tier if pinned is None else None
        while current is not None and current not in visited:
            visited.append(current)
            spilled_before = len(trace.spilled)
            if current in usable:
                pool = self._pool(current)
                chosen.extend(
                    self._admit(pool, current, request, output_tokens, rule, states or {}, trace)
                )
            current = self._next_tier.get(current)
            if not chosen and current is not None:
                what = "spilled" if len(trace.spilled) > spilled_before else "nothing admissible"
                trace.note("next_tier", f"{what} in tier {visited[-1]!r}: next tier {current!r}")
        # A spilled deployment still serves when nothing else can (better slow than refused).
        chosen.extend(d for d in trace.spilled if d not in chosen)
        if not chosen:
            why = [f"{c.deployment}: {c.why}" for c in trace.candidates if not c.kept]
            raise Refusal(
                400,
                "no_admissible_deployment",
                "No deployment can serve this request: "
                + ("; ".join(why) or "no deployment is configured"),
                tuple(trace.candidates),
            )
        first = chosen[0]
        effort = self._effort(first, estimate, trace)
        served_tier = self._tier_of.get(first.name, first.tier)
        reason = "; ".join([*trace.steps, f"chose {first.name!r} in tier {served_tier!r}"])
        return Decision(
            deployment=first,
            tier=served_tier,
            reason=reason,
            fallbacks=tuple(chosen[1 : self._spec.retries.max_attempts]),
            candidates=tuple(trace.candidates),
            reasoning_effort=effort,
            expected_cost=_cost(first, request.prompt_tokens, output_tokens),
            rules=tuple(trace.rules),
            latency_class=trace.latency_class,
        )

    def _latency_class(self, request: RoutingRequest, rule: TeamRule, trace: _Trace) -> str:
        """The request's own class, else the team rule's, else the policy's; noted unless it is
        the plain default (interactive, named by nobody)."""
        if request.latency_class is not None:
            latency, source = request.latency_class, request.latency_source or "request"
        elif rule.latency_class is not None:
            latency, source = rule.latency_class, "policy team rule"
        else:
            latency, source = self._spec.latency_class, "policy default"
            if latency == INTERACTIVE:
                return latency
        trace.note("latency_class", f"latency class {latency!r} ({source})")
        return latency

    def _resolve(
        self, model: str, estimate: Estimate | None, rule: TeamRule, trace: _Trace
    ) -> tuple[Deployment | None, str | None]:
        deployment = self._catalog.get(model)
        if deployment is not None and deployment.embedding:
            raise Refusal(
                400,
                "embedding_model",
                f"{model!r} is an embedding model: send it to POST /v1/embeddings",
                (),
            )
        if deployment is not None:
            trace.note("pinned", f"pinned model {model!r}")
            return deployment, self._tier_of.get(model)
        if model in self._tiers:
            if rule.allowed_tiers is not None and model not in rule.allowed_tiers:
                raise NotAllowed(f"This team may not use tier {model!r}")
            trace.note("tier", f"tier {model!r} requested")
            return None, model
        if model != AUTO:
            raise UnknownModel(model)
        tier = self._auto_tier(estimate, rule, trace)
        return None, tier

    def _auto_tier(self, estimate: Estimate | None, rule: TeamRule, trace: _Trace) -> str | None:
        tier: str | None
        if self._demand_routing and estimate is not None:
            demand = estimate.reasoning_demand
            index = next(
                i
                for i in reversed(range(len(self._thresholds)))
                if demand >= self._thresholds[i][0]
            )
            tier = self._thresholds[index][1]
            trace.note("demand", f"demand {demand:.3f} -> tier {tier!r} ({self._crossed(index)})")
        else:
            tier = rule.default_tier or self._spec.default_tier or self._default_tier()
            why = "no estimate" if self._demand_routing else "no policy tiers"
            trace.note("default", f"{why}: auto -> default tier {tier!r}")
        allowed = rule.allowed_tiers
        if allowed is not None and tier not in allowed:
            order = self._order
            index = order.index(tier) if tier in order else 0
            below = [t for t in order[:index][::-1] if t in allowed]
            above = [t for t in order[index + 1 :] if t in allowed]
            if not below and not above:
                raise NotAllowed("This team may use no tier that auto can route to")
            replacement = (below or above)[0]
            trace.note("team_tiers", f"team may not use {tier!r}: tier {replacement!r}")
            tier = replacement
        return tier

    def _crossed(self, index: int) -> str:
        """The thresholds that put demand in tier `index`: its own and the next one up."""
        bounds = []
        if index > 0:
            low, name = self._thresholds[index]
            bounds.append(f">= min_demand {low:.3f} of {name!r}")
        if index + 1 < len(self._thresholds):
            high, name = self._thresholds[index + 1]
            bounds.append(f"< min_demand {high:.3f} of {name!r}")
        # A comma, not a semicolon: the explanation's steps are separated by semicolons.
        return ", ".join(bounds) or "the only tier"

    def _default_tier(self) -> str | None:
        if self._default in self._tiers:
            return self._default
        deployment = self._catalog.get(self._default or "")
        if deployment is not None:
            return self._tier_of.get(deployment.name) or deployment.tier
        return self._order[0] if self._order else None

    def _sticky(
        self, tier: str | None, floor: TierFloor | None, rule: TeamRule, trace: _Trace
    ) -> str | None:
        """The tier raised to the conversation's floor: it may move up, never down. The team's
        allowed tiers win over it, and soft budgets cap it afterwards (_soft_cap)."""
        order = self._order
        if floor is None or tier is None or tier not in order or floor.tier not in order:
            return tier  # a floor from before the tiers changed means nothing now
        if order.index(floor.tier) <= order.index(tier):
            return tier
        if rule.allowed_tiers is not None and floor.tier not in rule.allowed_tiers:
            trace.note("team_tiers", f"sticky: {floor.why}, not forced: team may not use it")
            return tier
        trace.note("sticky", f"sticky: {floor.why}: tier {floor.tier!r}, not {tier!r}")
        return floor.tier

    def _soft_cap(self, tier: str | None, team: TeamContext | None, trace: _Trace) -> str | None:
        """The tier after soft budgets: the policy's `soft_budget` share, and a team's or key's
        `mode: soft` budget past its `soft_at_percent` (capped at the policy's `cap_tier`, or
        at the cheapest tier when the policy has no `soft_budget` section)."""
        if team is None or tier is None or tier not in self._order:
            return tier
        soft = self._spec.soft_budget
        cap, why = None, ""
        if soft is not None and team.budget_used is not None:
            if team.budget_used >= soft.threshold:
                used, threshold = f"{team.budget_used:.0%}", f"{soft.threshold:.0%}"
                cap, why = soft.cap_tier, f"{used} used >= {threshold}"
        if cap is None and team.soft_budgets:
            cap = soft.cap_tier if soft is not None else self._order[0]
            why = f"{', '.join(team.soft_budgets)} past its soft_at_percent"
        if cap is not None and self._order.index(tier) > self._order.index(cap):
            trace.note("soft_budget", f"soft budget: {why}, capped at {cap!r}")
            return cap
        return tier

    def _usable_tiers(self, rule: TeamRule, cap: str | None) -> set[str]:
        """Tiers a request may be served from: the team's, and none above a soft-budget cap."""
        order = self._order
        usable = set(order if rule.allowed_tiers is None else rule.allowed_tiers)
        if cap is not None and cap in order:
            usable &= set(order[: order.index(cap) + 1])
        return usable

    def _check_allowed(self, deployment: Deployment, rule: TeamRule) -> None:
        tier = self._tier_of.get(deployment.name)
        if rule.allowed_models is not None and deployment.name not in rule.allowed_models:
            if rule.allowed_tiers is None or tier not in rule.allowed_tiers:
                raise NotAllowed(f"This team may not use model {deployment.name!r}")
        elif rule.allowed_tiers is not None and tier not in rule.allowed_tiers:
            if rule.allowed_models is None or deployment.name not in rule.allowed_models:
                raise NotAllowed(f"This team may not use model {deployment.name!r}")
        if rule.local_only and not deployment.local:
            raise NotAllowed(f"This team may use only local models; {deployment.name!r} is remote")

    def _pool(self, tier: str) -> list[Deployment]:
        return list(self._tiers.get(tier, ()))

    def _admit(
        self,
        pool: list[Deployment],
        tier: str | None,
        request: RoutingRequest,
        output_tokens: int,
        rule: TeamRule,
        states: Mapping[str, DeploymentState],
        trace: _Trace,
    ) -> list[Deployment]:
        kept: list[tuple[Decimal, int, Deployment, Decimal]] = []
        saturated: list[tuple[Decimal, int, Deployment, Decimal]] = []
        for index, deployment in enumerate(pool):
            cost = _cost(deployment, request.prompt_tokens, output_tokens)
            why = _dropped_because(deployment, request, output_tokens, rule)
            state = states.get(deployment.name)
            if why is None and state is not None and not state.healthy:
                why = "unhealthy"
            if why is not None:
                trace.candidates.append(Candidate(deployment.name, tier, False, why, cost))
                continue
            if state is not None and state.spill is not None:
                trace.candidates.append(
                    Candidate(deployment.name, tier, True, f"spilled: {state.spill}", cost)
                )
                trace.note("spill", f"spill: {deployment.name!r} {state.spill}")
                trace.spilled.append(deployment)
                continue
            if state is not None and state.slow is not None and trace.latency_class == INTERACTIVE:
                # Like a spill: passed over while anything else can serve, never refused for it.
                why = f"breaks its latency objective: {state.slow}"
                trace.candidates.append(Candidate(deployment.name, tier, True, why, cost))
                trace.note("latency_objective", f"latency: {deployment.name!r} {why}")
                trace.spilled.append(deployment)
                continue
            rank = cost if self._spec.selection == "cost" else _ZERO
            entry = (rank, index, deployment, cost)
            if state is not None and state.load >= 1.0:
                saturated.append(entry)
            else:
                kept.append(entry)
        # A saturated deployment is used only when nothing else in the tier is free.
        kept.sort(key=lambda e: (e[0], e[1]))
        saturated.sort(key=lambda e: (e[0], e[1]))
        for entry in kept:
            trace.candidates.append(Candidate(entry[2].name, tier, True, "admissible", entry[3]))
        for entry in saturated:
            trace.candidates.append(
                Candidate(entry[2].name, tier, True, "saturated, kept last", entry[3])
            )
        return [e[2] for e in kept] + [e[2] for e in saturated]

    def _output_tokens(self, request: RoutingRequest, estimate: Estimate | None) -> int:
        if estimate is not None:
            predicted = estimate.token_budget_p90
            return (
                min(predicted, request.max_output_tokens)
                if request.max_output_tokens
                else predicted
            )
        return request.max_output_tokens or self._spec.default_output_tokens

    def _effort(
        self, deployment: Deployment, estimate: Estimate | None, trace: _Trace
    ) -> str | None:
        if estimate is None or not deployment.capabilities.reasoning:
            return None
        for step in self._spec.reasoning_effort:
            if step.below is None or estimate.reasoning_demand < step.below:
                trace.note("reasoning_effort", f"reasoning effort {step.effort!r}")
                return step.effort
        return None


def _dropped_because(
    deployment: Deployment, request: RoutingRequest, output_tokens: int, rule: TeamRule
) -> str | None:
    caps = deployment.capabilities
    if request.needs_tools and caps.tools is False:
        return "does not support tools"
    if request.needs_vision and caps.vision is False:
        return "does not support images"
    if request.needs_json_schema and caps.json_schema is False:
        return "does not support JSON schema"
    window = caps.context_window
    if window is not None and request.prompt_tokens + output_tokens > window:
        return f"context {request.prompt_tokens}+{output_tokens} tokens over its window of {window}"
    if rule.local_only and not deployment.local:
        return "team may use only local models"
    if rule.allowed_models is not None and deployment.name not in rule.allowed_models:
        if rule.allowed_tiers is None:
            return "not on the team's allow-list"
    return None


def _cost(deployment: Deployment, prompt_tokens: int, output_tokens: int) -> Decimal:
    return deployment.price.cost(
        Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens)
    )
