"""The shipped router's behaviour: types, ranges, orderings that any sane model must keep."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router import Estimate, Router
from router.artifact import default_artifact_dir
from router.encoders.base import clip_texts
from router.estimate import CATEGORIES

PROOF = (
    "Let G be a finite group and H a subgroup of G. Prove Lagrange's theorem: the order of H divides the order of G. "
    "Then prove that every group of prime order is cyclic, and use both results to show that a^(p-1) = 1 mod p for "
    "every integer a not divisible by the prime p. Give every step of each proof and justify each lemma you use."
)
TRANSLATION = "Translate 'hello' to French"


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def test_multi_step_proof_scores_higher_demand_than_translation(router: Router) -> None:
    assert router.estimate(PROOF).reasoning_demand > router.estimate(TRANSLATION).reasoning_demand


def test_small_talk_scores_lower_demand_than_a_multi_step_word_problem(router: Router) -> None:
    word_problem = (
        "A shop sells pencils at 3 for $1.20 and pens at 2 for $3.50. Maria buys 12 pencils and "
        "5 pens, pays with a $20 bill and gets a 10% discount on the pens. How much change does "
        "she get?"
    )
    small_talk = "Hi! How are you today?"
    assert (
        router.estimate(small_talk).reasoning_demand
        < router.estimate(word_problem).reasoning_demand
    )


def test_multi_step_proof_gets_a_larger_token_budget_than_translation(
    router: Router,
) -> None:
    proof, translation = router.estimate(PROOF), router.estimate(TRANSLATION)
    assert proof.token_budget_p50 > translation.token_budget_p50
    assert proof.token_budget_p90 > translation.token_budget_p90


def test_estimate_is_a_typed_value_within_its_ranges(router: Router) -> None:
    estimate = router.estimate("Write a haiku about autumn.")
    assert isinstance(estimate, Estimate)
    assert 0.0 <= estimate.reasoning_demand <= 1.0
    assert isinstance(estimate.token_budget_p50, int) and isinstance(estimate.token_budget_p90, int)
    assert 1 <= estimate.token_budget_p50 <= estimate.token_budget_p90
    assert estimate.category in CATEGORIES


def test_estimate_batch_matches_single_estimates(router: Router) -> None:
    prompts = [
        PROOF,
        TRANSLATION,
        "",
        "def f(x):\n    return x ** 2\n# explain this code",
    ]
    uncached = Router.load(cache_size=0)  # each prompt worked out alone, none from an LRU
    batched, single = (
        uncached.estimate_batch(prompts),
        [uncached.estimate(p) for p in prompts],
    )
    for b, s in zip(batched, single, strict=True):
        assert_same_estimate(b, s)


def assert_same_estimate(a: Estimate, b: Estimate) -> None:
    """Equal to the last bits a different batch size may change in the demand."""
    assert a.reasoning_demand == pytest.approx(b.reasoning_demand, abs=1e-9)
    assert (a.token_budget_p50, a.token_budget_p90, a.category) == (
        b.token_budget_p50,
        b.token_budget_p90,
        b.category,
    )


class _CountedHeads:
    """The router's heads, counting the prompts they are asked to estimate."""

    def __init__(self, heads: object) -> None:
        self._heads = heads
        self.rows = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._heads, name)

    def estimates(self, embeddings: np.ndarray, features: np.ndarray) -> list[Estimate]:
        self.rows += len(embeddings)
        return self._heads.estimates(embeddings, features)  # type: ignore[attr-defined,no-any-return]

    def estimate_one(self, embedding: np.ndarray, features: np.ndarray) -> Estimate:
        self.rows += 1
        return self._heads.estimate_one(embedding, features)  # type: ignore[attr-defined,no-any-return]


def test_a_repeated_prompt_is_estimated_once_and_answered_the_same() -> None:
    cached = Router.load()
    counted = _CountedHeads(cached.heads)
    cached.heads = counted  # type: ignore[assignment]
    prompts = [PROOF, TRANSLATION, PROOF, "", TRANSLATION]
    first = cached.estimate_batch(prompts)
    assert counted.rows == 3  # each distinct prompt once, the duplicates in the batch included
    again = cached.estimate_batch([TRANSLATION, PROOF, ""])
    assert counted.rows == 3  # all from the LRU
    assert again == [first[1], first[0], first[3]]
    assert first[0] == first[2] and first[1] == first[4]
    fresh = Router.load(cache_size=0).estimate_batch(prompts)
    for f, c in zip(fresh, first, strict=True):
        assert_same_estimate(f, c)


def test_without_an_lru_every_prompt_is_worked_out_each_time() -> None:
    uncached = Router.load(cache_size=0)
    counted = _CountedHeads(uncached.heads)
    uncached.heads = counted  # type: ignore[assignment]
    uncached.estimate_batch([PROOF, PROOF])
    uncached.estimate_batch([PROOF])
    assert counted.rows == 2  # the batch's duplicate once, then again: nothing is kept


def test_embed_batch_returns_unit_length_rows(router: Router) -> None:
    emb = router.embed_batch([PROOF, TRANSLATION])
    assert emb.shape == (2, router.encoder.dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_a_code_prompt_is_categorised_as_code(router: Router) -> None:
    prompt = "Write a Python function that merges two sorted lists, with unit tests using pytest."
    assert router.estimate(prompt).category == "code"


def test_a_one_megabyte_prompt_is_estimated_without_error(router: Router) -> None:
    estimate = router.estimate("word " * 200_000)
    assert 0.0 <= estimate.reasoning_demand <= 1.0


def test_a_lone_surrogate_is_estimated_as_a_replacement_character(router: Router) -> None:
    # json.loads('"\\ud800"') gives such a str; tokenizers reject it outright.
    assert router.estimate("Sum 2 and \ud800 3.") == router.estimate("Sum 2 and \ufffd 3.")
    assert clip_texts(["a\udc00b\ud83d"]) == ["a\ufffdb\ufffd"]


REPORT = (
    "The committee reviewed the quarterly figures. Revenue rose 12% to $4.1 million, while "
    "costs grew faster than planned; see the table below for each region.\n"
    "Region | Q1 | Q2\nNorth | 1.2 | 1.4\nSouth | 0.9 | 1.1\n"
    "Why did costs rise? The report lists three causes and asks the board to decide.\n\n"
)


def test_past_the_longest_training_prompts_a_longer_prompt_changes_no_estimate(
    router: Router,
) -> None:
    # Features are read at the edge of their training range: the linear heads do not
    # extrapolate (without it the p90 budget kept growing with the prompt).
    ask = "Summarise the following in three sentences.\n\n"
    long, longer = (ask + REPORT * n for n in (1_000, 4_000))  # 0.3 MB and 1.2 MB
    assert router.estimate(long) == router.estimate(longer)


def test_heads_read_a_feature_outside_the_training_range_at_its_edge(router: Router) -> None:
    heads = router.heads
    assert heads.feature_range is not None
    low, high = heads.feature_range
    emb = router.embed_batch(["Summarise this report."])
    beyond = (high + 5.0 * (high - low + 1.0))[None, :].astype(np.float32)
    at_edge = high[None, :].astype(np.float32)
    assert heads.estimates(emb, beyond) == heads.estimates(emb, at_edge)
    unbounded = dataclasses.replace(heads, feature_range=None)  # artifacts before the range
    assert unbounded.estimates(emb, beyond) != heads.estimates(emb, beyond)


def test_shipped_artifact_is_small_and_has_no_pickles() -> None:
    files = list(default_artifact_dir().iterdir())
    assert sum(f.stat().st_size for f in files) < 20 * 1024 * 1024
    assert not [f for f in files if f.suffix in (".pkl", ".pickle", ".joblib")]
    assert (default_artifact_dir() / "MODEL_CARD.md").exists()


def test_default_runtime_imports_neither_torch_nor_sklearn() -> None:
    code = (
        "import sys; from router import Router; Router.load().estimate('hi'); "
        "bad = [m for m in ('torch', 'sklearn', 'sentence_transformers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_the_shipped_heads_read_a_neighbour_bank_in_the_knowledge_row_only(
    router: Router,
) -> None:
    neighbours = router.heads.neighbours
    assert neighbours is not None
    assert neighbours.bank.shape == (len(neighbours.value), router.encoder.dim)
    assert np.allclose(np.linalg.norm(neighbours.bank, axis=1), 1.0, atol=1e-2)
    reads = router.heads.demand_coef[:, -1] != 0.0
    assert reads.tolist() == [name == "knowledge" for name in CATEGORIES]
