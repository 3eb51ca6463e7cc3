"""Training targets derived from the routing data: demand, token budget, category.

The choices (model pairs, weak pools, rescaling of human references) are argued in
router/artifact/MODEL_CARD.md and docs/router.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.estimate import CATEGORIES
from router.training.dataset import RoutingRecord

# The pair each source is scored on (weak, strong): RouteLLM-style pairwise routing.
EVAL_PAIRS: dict[str, tuple[str, str]] = {
    "mmlu_pro": ("Mixtral-8x7B-Instruct-v0.1", "gpt-4o"),
    "bbh": ("davinci-direct", "davinci-cot"),
}
STRONG_MMLU = "gpt-4o"
# Models below this train accuracy on MMLU-Pro form the weak pool of the many-model target.
WEAK_POOL_MAX_ACCURACY = 0.45

# Strong-model answer length per source; references are human solutions, much terser than a
# chat model's step-by-step answer, so they are scaled up (factor per source).
BUDGET_SOURCES: dict[str, tuple[tuple[str, ...], float]] = {
    "mmlu_pro": (("gpt-4o",), 1.0),
    "arena_hard_1k": (("gpt-4",), 1.0),
    "arena_hard_v01": (("gpt-4-0314", "gpt-4-0613"), 1.0),
    "arena_hard_v2": (("o3-mini-2025-01-31",), 1.0),
    "bbh": (("davinci-cot",), 1.5),
    "gsm8k": (("reference",), 3.0),
    "math": (("reference",), 2.0),
    "humaneval": (("reference",), 4.0),
}


# Content rules for the prompts whose source gives no category (arena_hard_1k, arena_hard_v01),
# tried in this order. Without them every such prompt without a code word was "chat", and the
# category head learnt that open requests are chat whatever they ask (docs/router.md).
_CONTENT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "code",
        re.compile(
            r"```|\b(python|javascript|typescript|java|c\+\+|c#|rust|golang|kotlin|swift|php|sql|"
            r"bash|powershell|html|css|regex|code|function|script|program|class|api|dockerfile|"
            r"yaml|json|vba|matlab|react|django|flask|pandas)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "math",
        re.compile(
            r"\b(equation|integral|integrate|derivative|probability|prime|integers?|polynomial|"
            r"matrix|matrices|theorem|prove|proof|geometry|triangle|calculate|compute|solve|"
            r"percent|fraction|divisible|sum of|how many|how much)\b|[0-9]\s*[-+*/^=]\s*[0-9x]",
            re.IGNORECASE,
        ),
    ),
    (
        "reasoning",
        re.compile(
            r"\b(riddle|puzzle|logic|logical|deduce|which of the following must|who is lying|"
            r"sequence)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "writing",
        re.compile(
            r"\b(poem|poetry|story|stories|essay|e-?mail|letter|blog|article|speech|song|lyrics|"
            r"limerick|haiku|novel|screenplay|slogan|tagline|toast|cover letter|linkedin post|"
            r"tweet|rewrite|rephrase|paraphrase|proofread)\b",
            re.IGNORECASE,
        ),
    ),
)


@dataclass(frozen=True)
class Targets:
    """Per-record targets; a weight of 0 means 'no label for this head'."""

    demand: npt.NDArray[np.float64]
    demand_weight: npt.NDArray[np.float64]
    log_budget: npt.NDArray[np.float64]
    budget_weight: npt.NDArray[np.float64]
    category: npt.NDArray[np.int64]
    source: npt.NDArray[np.str_]


def category_of(record: RoutingRecord) -> str:
    """Map the source's coarse category onto the router's categories."""
    if record.category in ("stem", "humanities"):
        return "knowledge"
    if record.category in CATEGORIES:
        return record.category
    # Unlabelled arena prompts: label by what they ask (first matching rule), else chat.
    for category, pattern in _CONTENT_RULES:
        if pattern.search(record.prompt):
            return category
    return "chat"


def weak_pool(records: Sequence[RoutingRecord]) -> list[str]:
    """MMLU-Pro models whose accuracy on these records is below WEAK_POOL_MAX_ACCURACY."""
    totals: dict[str, list[float]] = {}
    for rec in records:
        if rec.source == "mmlu_pro":
            for model, outcome in rec.outcomes.items():
                totals.setdefault(model, []).append(outcome)
    return sorted(
        m for m, v in totals.items() if np.mean(v) < WEAK_POOL_MAX_ACCURACY and m != STRONG_MMLU
    )


def pair_label(record: RoutingRecord) -> float | None:
    """1.0 when the weak model fails and the strong one succeeds, else 0.0; None if unscored."""
    pair = EVAL_PAIRS.get(record.source)
    if pair is None or pair[0] not in record.outcomes or pair[1] not in record.outcomes:
        return None
    weak, strong = (record.outcomes[m] for m in pair)
    return float(weak < 0.5 and strong >= 0.5)


def _percentile_in_source(values: dict[int, float]) -> dict[int, float]:
    order = sorted(values, key=lambda i: values[i])
    n = max(len(order) - 1, 1)
    return {idx: rank / n for rank, idx in enumerate(order)}


def _demand(
    records: Sequence[RoutingRecord], pool: list[str]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    y = np.zeros(len(records))
    has = np.zeros(len(records), dtype=bool)
    ref_len: dict[str, dict[int, float]] = {"gsm8k": {}, "humaneval": {}}
    for i, rec in enumerate(records):
        if rec.source == "mmlu_pro" and STRONG_MMLU in rec.outcomes:
            # P(a random weak-pool model fails and the strong model succeeds): the pairwise label
            # averaged over many weak models, smoother and less pair-specific than one pair.
            fails = [1.0 - rec.outcomes[m] for m in pool if m in rec.outcomes]
            if fails:
                y[i], has[i] = (
                    float(rec.outcomes[STRONG_MMLU] >= 0.5) * float(np.mean(fails)),
                    True,
                )
        elif rec.source == "bbh":
            label = pair_label(rec)
            if label is not None:
                y[i], has[i] = label, True
        elif rec.source == "math" and rec.difficulty is not None:
            y[i], has[i] = 0.1 * float(rec.difficulty), True  # level 1..5 -> 0.1..0.5
        # arena_hard_1k's prompt ratings are left out: they rate prompts, they are not outcomes
        # of a small and a strong model, and their pull (shorter arena prompts rated harder,
        # Spearman -0.29 with length) made short chit-chat look hard (docs/router.md).
        elif rec.source in ref_len and "reference" in rec.output_tokens:
            ref_len[rec.source][i] = float(rec.output_tokens["reference"])
    for values in ref_len.values():
        # Longer reference solution = more steps = more often failed by small models.
        for i, pct in _percentile_in_source(values).items():
            y[i], has[i] = 0.1 + 0.3 * pct, True
    return y, has


def _budget(
    records: Sequence[RoutingRecord],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    y = np.zeros(len(records))
    has = np.zeros(len(records), dtype=bool)
    for i, rec in enumerate(records):
        models, factor = BUDGET_SOURCES.get(rec.source, ((), 1.0))
        lengths = [rec.output_tokens[m] for m in models if rec.output_tokens.get(m, 0) > 0]
        if lengths:
            y[i], has[i] = float(np.mean(np.log(lengths))) + np.log(factor), True
    return y, has


def _balanced_weights(
    records: Sequence[RoutingRecord], has: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Give every source the same total weight, so big sources do not drown small ones."""
    sources = np.array([r.source for r in records])
    w = np.zeros(len(records))
    present = sorted(set(sources[has]))
    for src in present:
        mask = has & (sources == src)
        w[mask] = len(records) / (len(present) * mask.sum())
    return w


def build_targets(records: Sequence[RoutingRecord], pool: list[str]) -> Targets:
    """Compute all heads' targets and weights for `records` (pool from weak_pool on train)."""
    demand, has_demand = _demand(records, pool)
    budget, has_budget = _budget(records)
    cats = np.array([CATEGORIES.index(category_of(r)) for r in records], dtype=np.int64)
    return Targets(
        demand=demand,
        demand_weight=_balanced_weights(records, has_demand),
        log_budget=budget,
        budget_weight=_balanced_weights(records, has_budget),
        category=cats,
        source=np.array([r.source for r in records]),
    )
