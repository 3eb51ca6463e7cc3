"""The decision engine, one rule per test: the chosen deployment and the explanation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from policies import (
    Capabilities,
    Catalog,
    DeploymentState,
    ModelInfo,
    ModelSpec,
    NotAllowed,
    PolicyEngine,
    PolicySpec,
    Refusal,
    RoutingRequest,
    TeamContext,
    UnknownModel,
    validate_policy,
)
from router import Estimate

EASY = Estimate(reasoning_demand=0.1, token_budget_p50=50, token_budget_p90=120, category="chat")
MEDIUM = Estimate(
    reasoning_demand=0.5, token_budget_p50=300, token_budget_p90=800, category="writing"
)
HARD = Estimate(reasoning_demand=0.9, token_budget_p50=900, token_budget_p90=3000, category="math")


def model(name: str, input_price: str, output_price: str, **extra: Any) -> dict[str, Any]:
    caps = extra.pop("capabilities", {})
    return {
        "name": name,
        "model": f"openai/{name}",
        "price": {"input_per_mtok": input_price, "output_per_mtok": output_price},
        "capabilities": {"context_window": 128_000, "tools": True, "vision": True,
                         "json_schema": True, **caps},
        **extra,
    }  # fmt: skip


MODELS = [
    model(
        "local-llama", "0", "0", local=True, capabilities={"context_window": 8192, "vision": False}
    ),
    model("mini", "0.15", "0.6"),
    model("mini-b", "0.10", "0.4", capabilities={"tools": False}),
    model("big", "2.5", "10"),
    model("big-b", "3", "15"),
    model("thinker", "1.1", "4.4", capabilities={"reasoning": True, "context_window": 200_000}),
]
POLICY: dict[str, Any] = {
    "tiers": [
        {"name": "light", "deployments": ["local-llama", "mini", "mini-b"], "min_demand": 0.0},
        {"name": "standard", "deployments": ["big", "big-b"], "min_demand": 0.35},
        {"name": "reasoning", "deployments": ["thinker"], "min_demand": 0.7},
    ],
    "teams": {
        "interns": {"allowed_tiers": ["light"]},
        "offline": {"local_only": True},
        "research": {"allowed_models": ["thinker"]},
    },
    "soft_budget": {"threshold": 0.8, "cap_tier": "light"},
}


def engine(
    policy: dict[str, Any] | None = None, models: list[dict[str, Any]] | None = None
) -> PolicyEngine:
    specs = [ModelSpec.model_validate(m) for m in models or MODELS]
    catalog = Catalog.build(specs, lambda _: ModelInfo(price=None))
    spec = PolicySpec.model_validate(policy if policy is not None else POLICY)
    validate_policy(spec, {d.name for d in catalog.deployments}, catalog.tier_names)
    return PolicyEngine(catalog, spec, default=None)


def request(model: str = "auto", **extra: Any) -> RoutingRequest:
    return RoutingRequest(model=model, prompt_tokens=extra.pop("prompt_tokens", 100), **extra)


@pytest.mark.parametrize(
    ("estimate", "tier"), [(EASY, "light"), (MEDIUM, "standard"), (HARD, "reasoning")]
)
def test_demand_thresholds_choose_the_tier(estimate: Estimate, tier: str) -> None:
    decision = engine().decide(request(), estimate)
    assert decision.tier == tier
    assert f"demand {estimate.reasoning_demand:.3f} -> tier {tier!r}" in decision.reason


def test_cheapest_expected_cost_wins_within_a_tier() -> None:
    decision = engine().decide(request(), MEDIUM)
    assert decision.deployment.name == "big"
    assert [d.name for d in decision.fallbacks] == ["big-b", "thinker"]
    kept = {c.deployment: c for c in decision.candidates if c.kept}
    assert kept["big"].expected_cost < kept["big-b"].expected_cost


def test_explicit_order_keeps_the_listed_preference() -> None:
    decision = engine({**POLICY, "selection": "order", "tiers": [
        {"name": "light", "deployments": ["mini", "mini-b"]},
    ]}).decide(request(), EASY)  # fmt: skip
    assert decision.deployment.name == "mini"


def test_tools_drop_deployments_without_tool_support() -> None:
    decision = engine().decide(request(needs_tools=True, prompt_tokens=10_000), EASY)
    dropped = {c.deployment: c.why for c in decision.candidates if not c.kept}
    assert dropped["mini-b"] == "does not support tools"
    assert decision.deployment.name == "mini"


def test_images_drop_deployments_without_vision() -> None:
    decision = engine().decide(request(needs_vision=True), EASY)
    dropped = {c.deployment: c.why for c in decision.candidates if not c.kept}
    assert dropped["local-llama"] == "does not support images"
    assert decision.deployment.name != "local-llama"


def test_context_overflow_moves_to_a_deployment_whose_window_fits() -> None:
    decision = engine().decide(request(prompt_tokens=8100), EASY)
    dropped = {c.deployment: c.why for c in decision.candidates if not c.kept}
    assert "over its window of 8192" in dropped["local-llama"]
    assert decision.deployment.name in {"mini", "mini-b"}


def test_context_overflow_in_a_whole_tier_climbs_to_the_next_larger() -> None:
    decision = engine().decide(request(prompt_tokens=150_000), EASY)
    assert decision.deployment.name == "thinker"
    assert "nothing admissible in tier 'standard': next tier 'reasoning'" in decision.reason


def test_nothing_fits_is_a_refusal_listing_every_candidate() -> None:
    with pytest.raises(Refusal) as caught:
        engine().decide(request(prompt_tokens=500_000), EASY)
    assert caught.value.status == 400
    assert {c.deployment for c in caught.value.candidates} == {m["name"] for m in MODELS}


def test_a_pinned_model_is_honoured() -> None:
    decision = engine().decide(request("big-b"), EASY)
    assert (decision.deployment.name, decision.tier) == ("big-b", "standard")
    assert decision.fallbacks == ()
    assert "pinned model 'big-b'" in decision.reason


def test_a_pinned_model_outside_the_teams_tiers_is_403() -> None:
    with pytest.raises(NotAllowed):
        engine().decide(request("big"), EASY, TeamContext("interns"))


def test_a_pinned_model_that_cannot_serve_is_refused_not_swapped() -> None:
    with pytest.raises(Refusal) as caught:
        engine().decide(request("mini-b", needs_tools=True), EASY)
    assert "does not support tools" in str(caught.value)


def test_a_requested_tier_outside_the_teams_tiers_is_403() -> None:
    with pytest.raises(NotAllowed):
        engine().decide(request("reasoning"), EASY, TeamContext("interns"))


def test_auto_for_a_restricted_team_stays_within_its_tiers() -> None:
    decision = engine().decide(request(), HARD, TeamContext("interns"))
    assert decision.tier == "light"
    assert "team may not use 'reasoning': tier 'light'" in decision.reason


def test_a_local_only_team_gets_only_local_deployments() -> None:
    decision = engine().decide(request(), EASY, TeamContext("offline"))
    assert decision.deployment.name == "local-llama" and decision.fallbacks == ()
    with pytest.raises(NotAllowed):
        engine().decide(request("mini"), EASY, TeamContext("offline"))


def test_a_team_allow_list_of_models_is_enforced() -> None:
    assert (
        engine().decide(request("thinker"), EASY, TeamContext("research")).deployment.name
        == "thinker"
    )
    with pytest.raises(NotAllowed):
        engine().decide(request("mini"), EASY, TeamContext("research"))


def test_over_the_soft_budget_threshold_a_team_is_capped_at_the_cheaper_tier() -> None:
    decision = engine().decide(request(), HARD, TeamContext("search", budget_used=0.85))
    assert decision.tier == "light"
    assert "soft budget: 85% used >= 80%, capped at 'light'" in decision.reason
    under = engine().decide(request(), HARD, TeamContext("search", budget_used=0.5))
    assert under.tier == "reasoning"


def test_a_soft_mode_budget_past_its_percent_caps_the_team_at_the_policys_cap_tier() -> None:
    past = TeamContext("search", soft_budgets=("team:search:monthly",))
    decision = engine().decide(request(), HARD, past)
    assert decision.tier == "light"
    assert "soft budget: team:search:monthly past its soft_at_percent, capped at 'light'" in (
        decision.reason
    )
    assert engine().decide(request(), HARD, TeamContext("search")).tier == "reasoning"


def test_a_soft_mode_budget_without_a_policy_cap_caps_the_team_at_the_cheapest_tier() -> None:
    policy = {k: v for k, v in POLICY.items() if k != "soft_budget"}
    past = TeamContext("search", soft_budgets=("key:key_1:daily",))
    decision = engine(policy).decide(request("reasoning"), HARD, past)
    assert decision.tier == "light"
    assert decision.deployment.name in {"local-llama", "mini", "mini-b"}


def test_unhealthy_deployments_are_dropped_and_saturated_ones_tried_last() -> None:
    states = {"big": DeploymentState(healthy=False), "big-b": DeploymentState(load=1.0)}
    decision = engine().decide(request("standard"), MEDIUM, None, states)
    assert decision.deployment.name == "big-b"
    why = {c.deployment: c.why for c in decision.candidates}
    assert why["big"] == "unhealthy" and why["big-b"].startswith("saturated, kept last")
    light = engine().decide(request(), EASY, None, {"local-llama": DeploymentState(load=1.0)})
    assert light.deployment.name == "mini-b" and light.fallbacks[-1].name == "local-llama"


def test_a_spilled_local_deployment_sends_new_requests_to_the_next_tier_with_the_reason() -> None:
    policy = {"tiers": [
        {"name": "local", "deployments": ["local-llama"]},
        {"name": "standard", "deployments": ["big"], "min_demand": 0.5},
    ]}  # fmt: skip
    spill = "queue 12 >= queue_high 8 (vllm metrics)"
    states = {"local-llama": DeploymentState(spill=spill, age_s=0.4)}
    decision = engine(policy).decide(request("local"), EASY, None, states)
    assert decision.deployment.name == "big" and decision.tier == "standard"
    assert [d.name for d in decision.fallbacks] == ["local-llama"]  # better slow than refused
    assert f"spill: 'local-llama' {spill}" in decision.reason
    assert "spilled in tier 'local': next tier 'standard'" in decision.reason
    why = {c.deployment: c.why for c in decision.candidates}
    assert why["local-llama"] == f"spilled: {spill}"
    back = engine(policy).decide(request("local"), EASY, None, {"local-llama": DeploymentState()})
    assert back.deployment.name == "local-llama"


def test_a_decision_names_each_rule_that_acted_from_a_bounded_set() -> None:
    from policies.decision import RULES

    capped = engine().decide(request(), HARD, TeamContext("search", budget_used=0.85))
    assert capped.rules[:2] == ("demand", "soft_budget")
    pinned = engine().decide(request("thinker"), HARD)
    assert pinned.rules == ("pinned", "reasoning_effort")
    policy = {"tiers": [
        {"name": "local", "deployments": ["local-llama"]},
        {"name": "standard", "deployments": ["big"], "min_demand": 0.5},
    ]}  # fmt: skip
    states = {"local-llama": DeploymentState(spill="queue 12 >= queue_high 8 (vllm metrics)")}
    spilled = engine(policy).decide(request("local"), EASY, None, states)
    assert spilled.rules == ("tier", "spill", "next_tier")
    assert set(capped.rules + pinned.rules + spilled.rules) <= set(RULES)


def test_a_pinned_spilled_deployment_is_still_served() -> None:
    states = {"local-llama": DeploymentState(spill="queue 9 >= queue_high 8 (vllm metrics)")}
    decision = engine().decide(request("local-llama"), EASY, None, states)
    assert decision.deployment.name == "local-llama"


@pytest.mark.parametrize(
    ("estimate", "effort"), [(EASY, "low"), (MEDIUM, "medium"), (HARD, "high")]
)
def test_demand_maps_to_reasoning_effort_on_reasoning_models(
    estimate: Estimate, effort: str
) -> None:
    decision = engine().decide(request("thinker"), estimate)
    assert decision.reasoning_effort == effort
    assert f"reasoning effort {effort!r}" in decision.reason


def test_no_reasoning_effort_for_models_without_reasoning() -> None:
    assert engine().decide(request("big"), HARD).reasoning_effort is None


def test_fallbacks_run_through_the_tier_then_the_next_tier_up() -> None:
    decision = engine().decide(request(), EASY)
    assert [d.name for d in decision.attempts()] == ["local-llama", "mini-b", "mini"]
    spec = {**POLICY, "retries": {"max_attempts": 5}}
    decision = engine(spec).decide(request(), EASY)
    assert [d.name for d in decision.attempts()] == [
        "local-llama",
        "mini-b",
        "mini",
        "big",
        "big-b",
    ]


def test_without_an_estimate_auto_goes_to_the_default_tier() -> None:
    decision = engine({**POLICY, "default_tier": "standard"}).decide(request(), None)
    assert decision.tier == "standard"
    assert "no estimate: auto -> default tier 'standard'" in decision.reason


def test_the_expected_cost_uses_the_p90_output_budget() -> None:
    decision = engine().decide(request("big", prompt_tokens=1000), HARD)
    assert decision.expected_cost == (1000 * Decimal("2.5") + 3000 * Decimal("10")) / 1_000_000


def test_an_unknown_model_name_raises_unknown_model() -> None:
    with pytest.raises(UnknownModel):
        engine().decide(request("gpt-17"), EASY)


def test_without_policy_tiers_model_tiers_and_pins_still_work() -> None:
    models = [model("a", "1", "1", tier="light"), model("b", "2", "2", tier="standard")]
    eng = engine({}, models)
    assert eng.decide(request("standard"), HARD).deployment.name == "b"
    assert eng.decide(request("a"), HARD).deployment.name == "a"
    assert eng.names() == ["auto", "light", "standard", "a", "b"]


def test_a_tier_named_as_a_deployment_is_listed_once_and_means_the_deployment() -> None:
    models = [model("fast", "1", "1", tier="slow"), model("b", "2", "2", tier="fast")]
    eng = engine({}, models)
    assert eng.names() == ["auto", "slow", "fast", "b"]
    assert eng.decide(request("fast"), HARD).deployment.name == "fast"  # a pin, as before


def test_capabilities_unknown_to_the_catalog_are_assumed_present() -> None:
    caps = Capabilities()
    assert caps.tools is None
    models = [{"name": "x", "model": "openai/x", "local": True}]
    decision = engine({"tiers": [{"name": "t", "deployments": ["x"]}]}, models).decide(
        request(needs_tools=True), EASY
    )
    assert decision.deployment.name == "x"


def test_with_no_deployment_configured_the_refusal_says_so() -> None:
    catalog = Catalog.build([], lambda _: ModelInfo(price=None))
    eng = PolicyEngine(catalog, PolicySpec.model_validate({}), default=None)
    with pytest.raises(Refusal) as caught:
        eng.decide(request(), EASY)
    assert str(caught.value).endswith(": no deployment is configured")
