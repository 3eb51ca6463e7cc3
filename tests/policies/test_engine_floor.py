"""A tier floor (session stickiness): a conversation moves up, never down; caps still win."""

from __future__ import annotations

from policies import TeamContext, TierFloor
from tests.policies.test_engine import EASY, HARD, MEDIUM, engine, request

SERVED_REASONING = TierFloor("reasoning", "conversation served by 'reasoning' at 17:00Z")


def test_auto_below_the_floor_is_served_by_the_floor_tier_and_says_why() -> None:
    decision = engine().decide(request(floor=SERVED_REASONING), EASY)
    assert decision.tier == "reasoning"
    assert decision.deployment.name == "thinker"
    assert (
        "sticky: conversation served by 'reasoning' at 17:00Z: tier 'reasoning', not 'light'"
        in decision.reason
    )


def test_a_harder_turn_moves_the_conversation_up_past_its_floor() -> None:
    decision = engine().decide(request(floor=TierFloor("light", "earlier")), MEDIUM)
    assert decision.tier == "standard"
    assert "sticky" not in decision.reason


def test_a_floor_at_the_demanded_tier_changes_nothing() -> None:
    plain = engine().decide(request(), HARD)
    floored = engine().decide(request(floor=SERVED_REASONING), HARD)
    assert (floored.deployment, floored.reason) == (plain.deployment, plain.reason)


def test_a_tier_asked_for_by_name_ignores_the_floor() -> None:
    decision = engine().decide(request("light", floor=SERVED_REASONING), EASY)
    assert decision.tier == "light"
    assert "sticky" not in decision.reason


def test_a_pinned_model_ignores_the_floor() -> None:
    decision = engine().decide(request("mini", floor=SERVED_REASONING), EASY)
    assert decision.deployment.name == "mini"
    assert "sticky" not in decision.reason


def test_the_teams_allowed_tiers_win_over_the_floor() -> None:
    decision = engine().decide(request(floor=SERVED_REASONING), EASY, TeamContext("interns"))
    assert decision.tier == "light"
    assert "not forced: team may not use it" in decision.reason


def test_a_soft_budget_caps_a_floored_conversation() -> None:
    team = TeamContext("search", budget_used=0.9)
    decision = engine().decide(request(floor=SERVED_REASONING), EASY, team)
    assert decision.tier == "light"
    assert "soft budget: 90% used >= 80%, capped at 'light'" in decision.reason
    assert all(c.tier == "light" for c in decision.candidates)


def test_a_floor_naming_a_tier_that_no_longer_exists_is_ignored() -> None:
    decision = engine().decide(request(floor=TierFloor("gone", "before a reload")), EASY)
    assert decision.tier == "light"
