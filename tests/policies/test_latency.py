"""The decision engine and latency (issue 26): the class's resolution in the policy, and a
deployment breaking its tier's latency objective passed over by interactive requests."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from policies import DeploymentState, LatencyObjective, TeamContext
from tests.policies.test_engine import EASY, POLICY, engine, request

SLOW = "p95 total 1830 ms > 1000 ms over its last 20 requests"


def test_a_request_without_a_class_is_interactive_and_says_nothing_of_it() -> None:
    decision = engine().decide(request(), EASY)
    assert decision.latency_class == "interactive"
    assert "latency" not in decision.reason and "latency_class" not in decision.rules


def test_the_requests_class_beats_the_team_rule_which_beats_the_policy_default() -> None:
    policy: dict[str, Any] = {
        **POLICY,
        "latency_class": "background",
        "teams": {"evals": {"latency_class": "batch"}},
    }
    policies = engine(policy)
    assert policies.decide(request(), EASY).latency_class == "background"
    team = TeamContext("evals")
    decided = policies.decide(request(), EASY, team)
    assert decided.latency_class == "batch"
    assert "latency class 'batch' (policy team rule)" in decided.reason
    asked = request(latency_class="interactive", latency_source="x-rightsize-latency header")
    decided = policies.decide(asked, EASY, team)
    assert decided.latency_class == "interactive"
    assert "latency class 'interactive' (x-rightsize-latency header)" in decided.reason


def test_a_slow_deployment_is_passed_over_by_interactive_requests_with_the_reason() -> None:
    states = {"mini-b": DeploymentState(slow=SLOW), "local-llama": DeploymentState(slow=SLOW)}
    decision = engine().decide(request("light"), EASY, None, states)
    assert decision.deployment.name == "mini"
    assert f"latency: 'mini-b' breaks its latency objective: {SLOW}" in decision.reason
    assert "latency_objective" in decision.rules


def test_when_every_deployment_is_slow_the_request_is_still_served() -> None:
    names = ["local-llama", "mini", "mini-b", "big", "big-b", "thinker"]
    states = {name: DeploymentState(slow=SLOW) for name in names}
    decision = engine().decide(request("light"), EASY, None, states)
    assert decision.deployment.name in names  # better slow than refused


def test_a_batch_request_keeps_a_slow_deployment() -> None:
    states = {"local-llama": DeploymentState(slow=SLOW)}
    batch = request("light", latency_class="batch", latency_source="key default")
    assert engine().decide(batch, EASY, None, states).deployment.name == "local-llama"
    interactive = engine().decide(request("light"), EASY, None, states)
    assert interactive.deployment.name != "local-llama"


def test_an_objective_names_at_least_one_bound_and_fits_its_window() -> None:
    with pytest.raises(ValidationError):
        LatencyObjective()
    with pytest.raises(ValidationError):
        LatencyObjective(total_p95_ms=100, window=10, min_samples=20)
