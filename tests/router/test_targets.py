"""Category labels: sources that give none are labelled by what the prompt asks."""

from __future__ import annotations

import pytest

from router.training.dataset import RoutingRecord
from router.training.targets import category_of


def _arena(prompt: str, category: str | None = None) -> RoutingRecord:
    return RoutingRecord(
        id="arena_hard_v01:x",
        source="arena_hard_v01",
        prompt=prompt,
        category=category,
        difficulty=None,
    )


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("How do I merge two dataframes in pandas on a shared column?", "code"),
        ("Solve the equation 3x^2 - 12 = 0 and explain each step.", "math"),
        ("Here is a riddle: what has keys but cannot open locks?", "reasoning"),
        ("Write a short poem about the sea at night.", "writing"),
        ("What are some good hobbies for a rainy weekend?", "chat"),
    ],
)
def test_an_unlabelled_arena_prompt_is_labelled_by_what_it_asks(prompt: str, expected: str) -> None:
    assert category_of(_arena(prompt)) == expected


def test_a_sources_own_category_wins_over_the_content_rules() -> None:
    assert category_of(_arena("Write a poem about prime numbers.", "math")) == "math"
    assert category_of(_arena("Which of these is a noble gas?", "stem")) == "knowledge"
