"""Heads.estimate_one, the gateway's one-prompt path, gives the batch's estimates.

The batch path (estimates_batched) is what training and `rightsize eval` score; the one-row path
runs the same arithmetic with its dot products in one matrix-vector product, so only the last
bits of the demand may differ. Every head's variant is covered: the shipped heads (the
neighbour column read late, by knowledge rows only), heads whose budget weighs the column
(read first), a tuned residual, and heads without a bank or feature range.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from router import Router
from router.features import features_batch
from router.heads import Heads
from tests.router.test_neighbours import _varied_prompts
from tests.router.test_router import assert_same_estimate


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load(cache_size=0)


@pytest.fixture(scope="module")
def rows(router: Router) -> tuple[np.ndarray, np.ndarray]:
    prompts = [*_varied_prompts(300, seed=7), "", "x" * 40_000, "Prove 1+1=2." * 200]
    return router.embed_batch(prompts), features_batch(prompts, router.heads.feature_set)


def _residual(heads: Heads, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    residual = rng.normal(0.0, 0.05, len(heads.input_mean) + 2)
    residual[-2:] = (0.3, -0.2)  # slope on the base logit, intercept
    return residual


def _variants(heads: Heads) -> dict[str, Heads]:
    budget_reads_column = heads.budget_coef.copy()
    budget_reads_column[-1] = 0.4
    residual_on_column = _residual(heads, 1)
    residual_on_column[-3] = 0.7  # its weight on the neighbour column
    return {
        "shipped": heads,
        "tuned": dataclasses.replace(heads, demand_residual=_residual(heads, 0)),
        "tuned, residual reads the column": dataclasses.replace(
            heads, demand_residual=residual_on_column
        ),
        "budget reads the column": dataclasses.replace(
            heads, budget_coef=budget_reads_column, demand_residual=_residual(heads, 2)
        ),
        "no bank, no range": dataclasses.replace(
            heads,
            neighbours=None,
            feature_range=None,
            input_mean=heads.input_mean[:-1],
            input_scale=heads.input_scale[:-1],
            demand_coef=heads.demand_coef[:, :-1],
            budget_coef=heads.budget_coef[:-1],
            category_coef=heads.category_coef[:, :-1],
        ),
    }


@pytest.mark.parametrize(
    "variant",
    [
        "shipped",
        "tuned",
        "tuned, residual reads the column",
        "budget reads the column",
        "no bank, no range",
    ],
)
def test_one_row_gives_the_batchs_estimate(
    router: Router, rows: tuple[np.ndarray, np.ndarray], variant: str
) -> None:
    heads = _variants(router.heads)[variant]
    emb, feats = rows
    batched = heads.estimates_batched(emb, feats)
    # The rows must reach every branch: knowledge rows read the bank, the others skip it.
    categories = {e.category for e in batched}
    assert "knowledge" in categories and len(categories) >= 3
    for i, expected in enumerate(batched):
        assert_same_estimate(heads.estimate_one(emb[i], feats[i]), expected)
        assert_same_estimate(heads.estimates(emb[i : i + 1], feats[i : i + 1])[0], expected)
