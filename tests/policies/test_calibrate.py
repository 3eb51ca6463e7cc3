"""`calibrate` thresholds give the requested tier shares within 2 percentage points."""

from __future__ import annotations

import random

import pytest

from policies.calibrate import CalibrationError, parse_shares, shares_of, thresholds_for_shares

TIERS = ["light", "standard", "reasoning"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_give_the_requested_shares_within_two_points(seed: int) -> None:
    rng = random.Random(seed)
    demands = [rng.betavariate(2, 5) for _ in range(3000)]
    wanted = {"reasoning": 0.2, "standard": 0.5}
    thresholds = thresholds_for_shares(demands, TIERS, wanted)
    got = shares_of(demands, thresholds)
    assert abs(got["reasoning"] - 0.2) <= 0.02
    assert abs(got["standard"] - 0.5) <= 0.02
    assert abs(got["light"] - 0.3) <= 0.02
    assert thresholds["light"] == 0.0 < thresholds["standard"] < thresholds["reasoning"] <= 1.0


def test_a_share_for_the_first_tier_or_an_unknown_tier_is_refused() -> None:
    with pytest.raises(CalibrationError):
        thresholds_for_shares([0.1, 0.5], TIERS, {"light": 0.5})
    with pytest.raises(CalibrationError):
        thresholds_for_shares([0.1, 0.5], TIERS, {"gold": 0.5})
    with pytest.raises(CalibrationError):
        thresholds_for_shares([0.1, 0.5], TIERS, {"standard": 0.7, "reasoning": 0.6})


def test_share_pairs_parse_and_reject_garbage() -> None:
    assert parse_shares("reasoning=0.2, standard=0.5") == {"reasoning": 0.2, "standard": 0.5}
    with pytest.raises(CalibrationError):
        parse_shares("reasoning:0.2")
