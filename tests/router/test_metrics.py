"""Routing and budget metrics behave as RouteLLM defines them."""

from __future__ import annotations

import numpy as np

from router.metrics import budget_scores, routing_scores


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
