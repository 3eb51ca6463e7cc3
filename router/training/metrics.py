"""Routing metrics (RouteLLM's APGR and CPT) and token-budget accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RoutingScores:
    """APGR and call-performance thresholds for one weak/strong pair."""

    apgr: float
    cpt50: float
    cpt80: float
    auc: float


def pgr_curve(score: Array, weak: Array, strong: Array) -> tuple[Array, Array]:
    """PGR at every share of strong calls 0, 1/n, ..., 1 when the highest scores go strong.

    Ties in score are broken by averaging over their order (expected value of a random order).
    """
    n = len(score)
    order = np.argsort(-score, kind="stable")
    gain = (strong - weak)[order]
    sorted_scores = score[order]
    # Replace each tie block's gains by the block mean: the expected gain under random tie order.
    _, starts, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        if count > 1:
            gain[start : start + count] = gain[start : start + count].mean()
    perf = (weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    weak_perf, strong_perf = weak.mean(), strong.mean()
    denom = strong_perf - weak_perf
    pgr = (perf - weak_perf) / denom if abs(denom) > 1e-12 else np.zeros_like(perf)
    return np.arange(n + 1) / n, pgr


def roc_auc(score: Array, label: Array) -> float:
    """Mann-Whitney ROC-AUC with ties counted half; NaN if one class is missing."""
    pos, neg = score[label > 0.5], score[label <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(values: Array) -> Array:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _uniq, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return np.asarray((sums / counts)[inverse], dtype=np.float64)


def spearman(a: Array, b: Array) -> float:
    """Spearman rank correlation with average ranks for ties."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def routing_scores(score: Array, weak: Array, strong: Array) -> RoutingScores:
    """APGR (mean PGR over the share grid), CPT(50%), CPT(80%) and ROC-AUC of the pair label."""
    share, pgr = pgr_curve(score, weak, strong)
    apgr = float(np.trapezoid(pgr, share))

    def cpt(x: float) -> float:
        hit = np.nonzero(pgr >= x)[0]
        return float(share[hit[0]]) if len(hit) else 1.0

    return RoutingScores(
        apgr=apgr, cpt50=cpt(0.5), cpt80=cpt(0.8), auc=roc_auc(score, gap_label(weak, strong))
    )


def gap_label(weak: Array, strong: Array) -> Array:
    """1.0 where the weak model fails and the strong one succeeds (the demand target), else 0."""
    return ((weak < 0.5) & (strong >= 0.5)).astype(np.float64)


@dataclass(frozen=True)
class CalibrationScores:
    """How well a demand read as a probability matches the pair label's rate.

    ece_floor is the ECE a perfectly calibrated predictor with the same probabilities would
    show from sampling alone (mean over draws of labels ~ Bernoulli(prob)): an ECE near it is
    as calibrated as the sample can tell.
    """

    ece: float
    brier: float
    ece_floor: float


def _ece(prob: Array, label: Array, runs: list[npt.NDArray[np.intp]]) -> float:
    return float(sum(len(r) * abs(prob[r].mean() - label[r].mean()) for r in runs) / len(prob))


def calibration_scores(
    prob: Array, label: Array, bins: int = 10, draws: int = 200, seed: int = 0
) -> CalibrationScores:
    """Expected calibration error over equal-count bins of prob, the Brier score, the ECE floor.

    ECE = sum over bins of (bin share) * |mean prob - label rate|. Equal-count bins (prompts
    sorted by prob, split into `bins` runs) estimate every bin's rate from as many prompts.
    """
    if len(prob) == 0:
        return CalibrationScores(ece=float("nan"), brier=float("nan"), ece_floor=float("nan"))
    order = np.argsort(prob, kind="stable")
    runs = [run for run in np.array_split(order, min(bins, len(prob))) if len(run)]
    rng = np.random.default_rng(seed)
    floor = np.mean(
        [_ece(prob, (rng.random(len(prob)) < prob).astype(np.float64), runs) for _ in range(draws)]
    )
    return CalibrationScores(
        ece=_ece(prob, label, runs),
        brier=float(np.mean((prob - label) ** 2)),
        ece_floor=float(floor),
    )


@dataclass(frozen=True)
class BudgetScores:
    """Token-budget accuracy against the actual strong-model length."""

    within_2x: float
    median_abs_log2: float
    p90_coverage: float


def budget_scores(p50: Array, p90: Array, actual: Array) -> BudgetScores:
    """Share of p50 within 2x of actual, median |log2(p50/actual)|, share of actual <= p90."""
    ratio = np.abs(np.log2(np.maximum(p50, 1e-9) / np.maximum(actual, 1e-9)))
    return BudgetScores(
        within_2x=float(np.mean(ratio <= 1.0)),
        median_abs_log2=float(np.median(ratio)),
        p90_coverage=float(np.mean(actual <= p90)),
    )
