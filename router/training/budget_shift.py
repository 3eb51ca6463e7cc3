"""Token budgets moved to a deployment's own answer lengths, kept only if held-out rows agree.

A strong model's verbosity is its own: the base budget head's largest error between sources is
a bias (docs/router.md, Limits). With `strong_tokens` in a pairs file, `tune` shifts log p50 by
the median of log(actual / p50) and log p90 so that 90% of answers fit, each chosen on K-1
folds and scored on the held-out one; a shift is kept only if its out-of-fold gain (median
|log2| error for p50, distance of p90 coverage from 0.9 for p90) has a bootstrap lower bound
above zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
P90_TARGET = 0.9


@dataclass(frozen=True)
class BudgetShift:
    """Log shifts of p50 and p90 (0 where the base is kept) and why."""

    p50: float
    p90: float
    reason: str
    oof_p50: Array | None  # out-of-fold p50 / p90 under the kept shifts (the base elsewhere)
    oof_p90: Array | None


def _median_abs_log2(p50: Array, actual: Array) -> float:
    return float(np.median(np.abs(np.log2(p50 / actual))))


def _coverage_gap(p90: Array, actual: Array) -> float:
    return abs(float(np.mean(actual <= p90)) - P90_TARGET)


def fit_budget_shift(
    p50: Array,
    p90: Array,
    actual: Array,
    folds: int = 5,
    draws: int = 1000,
    confidence: float = 0.95,
    min_rows: int = 30,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> BudgetShift:
    """Cross-validated shifts of log p50 and log p90; each kept only if it helps held-out rows.

    With groups, a shift is also refused if any group of at least min_rows rows is worse off
    beyond noise: one shift serves the file, and two groups' strong models may differ.
    """
    n = len(actual)
    if n < max(min_rows, folds):
        return BudgetShift(
            0.0,
            0.0,
            f"{n} rows with strong_tokens, fewer than {min_rows}: budgets kept",
            None,
            None,
        )
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % folds
    r50 = np.log(actual) - np.log(p50)
    r90 = np.log(actual) - np.log(p90)
    oof50, oof90 = np.empty(n), np.empty(n)
    for k in range(folds):
        tr, te = fold != k, fold == k
        oof50[te] = p50[te] * np.exp(np.median(r50[tr]))
        oof90[te] = p90[te] * np.exp(np.quantile(r90[tr], P90_TARGET))
    tail = 1.0 - confidence

    def gains(rows: npt.NDArray[np.int64]) -> tuple[Array, Array]:
        boot = rows[rng.integers(0, len(rows), size=(draws, len(rows)))]
        g50 = [
            _median_abs_log2(p50[d], actual[d]) - _median_abs_log2(oof50[d], actual[d])
            for d in boot
        ]
        g90 = [_coverage_gap(p90[d], actual[d]) - _coverage_gap(oof90[d], actual[d]) for d in boot]
        return np.array(g50), np.array(g90)

    gain50, gain90 = gains(np.arange(n))
    keep50 = float(np.quantile(gain50, tail)) > 0.0
    keep90 = float(np.quantile(gain90, tail)) > 0.0
    loser50: str | None = None
    loser90: str | None = None
    if groups is not None and len(set(groups)) > 1:
        keys = np.asarray(groups)
        for name in sorted(set(groups)):
            ix = np.flatnonzero(keys == name)
            if len(ix) < min_rows:
                continue
            g50, g90 = gains(ix)
            if keep50 and float(np.quantile(g50, confidence)) < 0.0:
                keep50, loser50 = False, f"p50 kept (group {name!r} would be worse off)"
            if keep90 and float(np.quantile(g90, confidence)) < 0.0:
                keep90, loser90 = False, f"p90 kept (group {name!r} would be worse off)"
    shift50 = float(np.median(r50)) if keep50 else 0.0
    shift90 = float(np.quantile(r90, P90_TARGET)) if keep90 else 0.0
    noise = "kept (no held-out gain beyond noise)"
    said = [
        f"p50 x{np.exp(shift50):.2f}" if keep50 else loser50 or f"p50 {noise}",
        f"p90 x{np.exp(shift90):.2f}" if keep90 else loser90 or f"p90 {noise}",
    ]
    return BudgetShift(
        shift50,
        shift90,
        "; ".join(said),
        oof50 if keep50 else p50,
        oof90 if keep90 else p90,
    )
