"""Routing and budget metrics behave as RouteLLM defines them."""

from __future__ import annotations

import numpy as np

from router.training.metrics import budget_scores, calibration_scores, gap_label, routing_scores


def _pairs(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    strong = (rng.random(n) < 0.8).astype(float)
    weak = strong * (rng.random(n) < 0.5)
    return weak, strong


def test_an_oracle_router_beats_random_and_a_reversed_router_loses() -> None:
    weak, strong = _pairs()
    gain = strong - weak
    oracle = routing_scores(gain, weak, strong)
    reverse = routing_scores(-gain, weak, strong)
    flat = routing_scores(np.zeros_like(gain), weak, strong)
    assert oracle.apgr > 0.8
    assert reverse.apgr < 0.5
    assert abs(flat.apgr - 0.5) < 1e-9  # ties are routed in expectation, like a random router
    assert oracle.cpt50 < flat.cpt50 < reverse.cpt50
    assert oracle.auc == 1.0


def test_budget_scores_count_within_2x_and_p90_coverage() -> None:
    actual = np.array([100.0, 100.0, 100.0, 100.0])
    scores = budget_scores(
        np.array([50.0, 199.0, 300.0, 100.0]),
        np.array([90.0, 250.0, 400.0, 150.0]),
        actual,
    )
    assert scores.within_2x == 0.75
    assert scores.p90_coverage == 0.75


def test_calibration_scores_tell_a_calibrated_probability_from_a_shifted_one() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random(20_000)
    label = (rng.random(20_000) < prob).astype(float)
    calibrated = calibration_scores(prob, label)
    shifted = calibration_scores(np.clip(prob + 0.2, 0.0, 1.0), label)
    assert calibrated.ece < 0.02
    assert shifted.ece > 0.15
    assert calibrated.brier < shifted.brier
    # Sampling noise alone: the calibrated predictor sits at its floor, the shifted far above.
    assert abs(calibrated.ece - calibrated.ece_floor) < 0.01
    assert shifted.ece > 5 * shifted.ece_floor


def test_the_ece_floor_grows_when_fewer_prompts_fill_each_bin() -> None:
    rng = np.random.default_rng(2)
    prob = rng.random(4_000)
    label = (rng.random(4_000) < prob).astype(float)
    many = calibration_scores(prob, label).ece_floor
    few = calibration_scores(prob[:400], label[:400]).ece_floor
    assert few > 2 * many


def test_calibration_error_is_weighted_by_equal_count_bins() -> None:
    # Two bins of two prompts: predictions 0.1 against a rate of 0.5, then 0.9 against 1.0.
    scores = calibration_scores(
        np.array([0.1, 0.1, 0.9, 0.9]), np.array([0.0, 1.0, 1.0, 1.0]), bins=2
    )
    assert abs(scores.ece - (0.5 * 0.4 + 0.5 * 0.1)) < 1e-12
    assert abs(scores.brier - (0.01 + 0.81 + 0.01 + 0.01) / 4) < 1e-12


def test_the_gap_label_is_weak_fails_and_strong_succeeds() -> None:
    weak = np.array([0.0, 1.0, 0.0, 1.0])
    strong = np.array([1.0, 1.0, 0.0, 0.0])
    assert gap_label(weak, strong).tolist() == [1.0, 0.0, 0.0, 0.0]
