"""The neighbour column's fast paths give the bits the straightforward search gives.

The reference below is the implementation the shipped artifact was trained and evaluated with
(every row's column through one batched search, in design()); the one-row path and the
knowledge-rows-only search of Heads.estimates must not move any estimate.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import numpy.typing as npt
import pytest

from router import Router
from router.estimate import CATEGORIES, Estimate
from router.features import features_batch
from router.heads import Heads, Neighbours
from tests.router.test_router import assert_same_estimate

_SUBJECTS = ["physics", "law", "economics", "biology", "history", "chemistry", "philosophy"]
_OPENERS = [
    "Which of the following best describes",
    "What is the primary cause of",
    "According to most scholars, what explains",
    "Translate into German:",
    "Write a Python function that computes",
    "Solve for x: 3x + 7 = 22. Then explain",
    "hi! how are you today? tell me about",
    "Prove that the sum of two even numbers is",
]


def _varied_prompts(n: int, seed: int = 0) -> list[str]:
    """Multiple-choice questions (the knowledge rows that read the bank), maths, code, chat."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        subject = rng.choice(_SUBJECTS)
        stem = f"{rng.choice(_OPENERS)} {subject} topic {i} " + " ".join(
            rng.choice(_SUBJECTS) for _ in range(rng.randint(0, 40))
        )
        if i % 2 == 0:
            letters = "ABCDEFGHIJ"[: rng.randint(4, 10)]
            stem += "\n" + "\n".join(
                f"{c}. {rng.choice(_SUBJECTS)} {rng.random():.3f}" for c in letters
            )
        prompts.append(stem)
    return prompts


def _reference_column(
    neighbours: Neighbours, embeddings: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The column as first implemented: 16 rows at a time, float32 candidates, float64 choice."""
    k = min(neighbours.k, len(neighbours.value))
    n_cand = min(2 * k, len(neighbours.value))
    bank32 = neighbours.bank.astype(np.float32)
    out = np.empty(len(embeddings))
    for start in range(0, len(embeddings), 16):
        rows = embeddings[start : start + 16]
        rough = rows.astype(np.float32) @ bank32.T
        cand = np.argpartition(-rough, n_cand - 1, axis=1)[:, :n_cand]
        exact = np.einsum("rd,rcd->rc", rows.astype(np.float64), neighbours.bank[cand])
        best = np.argpartition(-exact, k - 1, axis=1)[:, :k]
        top = np.sort(np.take_along_axis(cand, best, axis=1), axis=1)
        out[start : start + len(rows)] = neighbours.value[top].mean(axis=1)
    return out


def _reference_estimates(
    heads: Heads, emb: npt.NDArray[np.float32], feats: npt.NDArray[np.float32]
) -> list[Estimate]:
    """Every head over the full design matrix, the column computed for every row."""
    assert heads.neighbours is not None
    read = np.clip(feats.astype(np.float64), heads.feature_range[0], heads.feature_range[1])  # type: ignore[index]
    column = _reference_column(heads.neighbours, emb)
    x = (
        np.hstack([emb.astype(np.float64), read, column[:, None]]) - heads.input_mean
    ) / heads.input_scale
    cats = heads.category(x)
    demand = heads.demand(x, cats)
    p50, p90 = heads.budget(x, cats)
    return [
        Estimate(float(d), max(1, round(a)), max(1, round(max(a, b))), CATEGORIES[int(c)])
        for d, a, b, c in zip(demand, p50, p90, cats, strict=True)
    ]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load(cache_size=0)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return _varied_prompts(400)


def test_the_one_row_column_equals_the_batched_reference_bit_for_bit(
    router: Router, prompts: list[str]
) -> None:
    neighbours = router.heads.neighbours
    assert neighbours is not None
    emb = router.embed_batch(prompts)
    reference = _reference_column(neighbours, emb)
    one_by_one = np.array([neighbours.column(emb[i : i + 1])[0] for i in range(len(emb))])
    assert np.array_equal(one_by_one, reference)
    assert np.array_equal(neighbours.column(emb), reference)


def test_estimates_equal_the_reference_that_searches_every_row(
    router: Router, prompts: list[str]
) -> None:
    emb, feats = router.embed_batch(prompts), features_batch(prompts)
    reference = _reference_estimates(router.heads, emb, feats)
    # The prompts must exercise both paths: knowledge rows read the bank, the others skip it.
    categories = {e.category for e in reference}
    assert "knowledge" in categories and len(categories) >= 3
    assert router.heads.estimates(emb, feats) == reference
    # One row takes estimate_one's path: the same arithmetic, its sums in another order.
    for i in range(40):
        assert_same_estimate(
            router.heads.estimates(emb[i : i + 1], feats[i : i + 1])[0], reference[i]
        )


def test_heads_whose_category_reads_the_column_search_every_row(
    router: Router, prompts: list[str]
) -> None:
    """The shortcut holds only while the category and budget heads give the column no weight."""
    heads = router.heads
    weighted = heads.category_coef.copy()
    weighted[:, -1] = np.linspace(-2.0, 2.0, len(CATEGORIES))
    reads_it = dataclasses.replace(heads, category_coef=weighted)
    emb, feats = router.embed_batch(prompts), features_batch(prompts)
    assert reads_it.estimates(emb, feats) == _reference_estimates(reads_it, emb, feats)
