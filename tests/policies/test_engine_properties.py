"""Property: over random catalogs, policies, teams and requests, the engine either names an
allowed, capable deployment whose context fits, or refuses clearly; it never crashes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    Catalog,
    Decision,
    DeploymentState,
    ModelInfo,
    ModelSpec,
    PolicyEngine,
    PolicySpec,
    Refusal,
    RoutingRequest,
    TeamContext,
    UnknownModel,
)
from router import Estimate

MAYBE = st.sampled_from([True, False, None])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[PolicyEngine, list[str], list[str]]:
    count = draw(st.integers(1, 6))
    names = [f"m{i}" for i in range(count)]
    models = [
        ModelSpec.model_validate(
            {
                "name": name,
                "model": f"openai/{name}",
                "local": draw(st.booleans()),
                "price": {
                    "input_per_mtok": str(draw(st.integers(0, 30))),
                    "output_per_mtok": str(draw(st.integers(0, 60))),
                },
                "capabilities": {
                    "context_window": draw(st.one_of(st.none(), st.integers(1000, 200_000))),
                    "tools": draw(MAYBE),
                    "vision": draw(MAYBE),
                    "json_schema": draw(MAYBE),
                    "reasoning": draw(MAYBE),
                },
            }
        )
        for name in names
    ]
    tier_count = draw(st.integers(1, 3))
    tiers = []
    thresholds = sorted(
        draw(st.sets(st.floats(0.01, 0.99), min_size=tier_count - 1, max_size=tier_count - 1))
    )
    for i in range(tier_count):
        members = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        tiers.append(
            {"name": f"t{i}", "deployments": members, "min_demand": ([0.0, *thresholds])[i]}
        )
    tier_names = [t["name"] for t in tiers]
    teams: dict[str, Any] = {
        "limited": {
            "allowed_tiers": draw(st.lists(st.sampled_from(tier_names), min_size=1, unique=True))
        },
        "local": {"local_only": True},
        "picky": {
            "allowed_models": draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        },
    }
    spec = PolicySpec.model_validate(
        {
            "tiers": tiers,
            "teams": teams,
            "selection": draw(st.sampled_from(["cost", "order"])),
            "soft_budget": {"threshold": 0.8, "cap_tier": draw(st.sampled_from(tier_names))},
            "retries": {"max_attempts": draw(st.integers(1, 5))},
        }
    )
    catalog = Catalog.build(models, lambda _: ModelInfo(price=None))
    return PolicyEngine(catalog, spec, default=None), names, tier_names


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    world=worlds(),
    data=st.data(),
)
def test_decisions_are_allowed_capable_and_fit_or_refuse_clearly(
    world: tuple[PolicyEngine, list[str], list[str]], data: st.DataObject
) -> None:
    engine, names, tier_names = world
    model = data.draw(st.sampled_from(["auto", "unknown-model", *names, *tier_names]))
    request = RoutingRequest(
        model=model,
        prompt_tokens=data.draw(st.integers(0, 250_000)),
        max_output_tokens=data.draw(st.one_of(st.none(), st.integers(1, 50_000))),
        needs_tools=data.draw(st.booleans()),
        needs_vision=data.draw(st.booleans()),
        needs_json_schema=data.draw(st.booleans()),
    )
    estimate = data.draw(
        st.one_of(
            st.none(),
            st.builds(
                Estimate,
                reasoning_demand=st.floats(0, 1),
                token_budget_p50=st.integers(1, 5000),
                token_budget_p90=st.integers(1, 20_000),
                category=st.sampled_from(["math", "chat", "code"]),
            ),
        )
    )
    team_name = data.draw(st.sampled_from(["limited", "local", "picky", "anyone"]))
    team = TeamContext(team_name, budget_used=data.draw(st.one_of(st.none(), st.floats(0, 2))))
    states = {
        n: DeploymentState(
            healthy=data.draw(st.booleans()),
            load=data.draw(st.floats(0, 1.5)),
            spill=data.draw(st.sampled_from([None, "queue 9 >= queue_high 8 (vllm metrics)"])),
        )
        for n in names
        if data.draw(st.booleans())
    }
    try:
        decision = engine.decide(request, estimate, team, states)
    except UnknownModel:
        assert model == "unknown-model"
        return
    except Refusal as refusal:
        assert refusal.status in (400, 403) and str(refusal)
        return
    check(engine, decision, request, estimate, team, states)


def check(
    engine: PolicyEngine,
    decision: Decision,
    request: RoutingRequest,
    estimate: Estimate | None,
    team: TeamContext,
    states: dict[str, DeploymentState],
) -> None:
    rule = engine.spec.teams.get(team.name)
    for deployment in decision.attempts():
        caps = deployment.capabilities
        assert not (request.needs_tools and caps.tools is False)
        assert not (request.needs_vision and caps.vision is False)
        assert not (request.needs_json_schema and caps.json_schema is False)
        output = estimate.token_budget_p90 if estimate else (request.max_output_tokens or 512)
        if estimate and request.max_output_tokens:
            output = min(output, request.max_output_tokens)
        if caps.context_window is not None:
            assert request.prompt_tokens + output <= caps.context_window
        state = states.get(deployment.name)
        assert state is None or state.healthy
        if rule is not None and rule.local_only:
            assert deployment.local
        if rule is not None and rule.allowed_models is not None:
            assert deployment.name in rule.allowed_models
        if rule is not None and rule.allowed_tiers is not None and request.model == "auto":
            assert engine.tier_of(deployment.name) in rule.allowed_tiers or any(
                deployment in engine._pool(t) for t in rule.allowed_tiers
            )
    assert decision.reason
