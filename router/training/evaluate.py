"""Dev-split evaluation of a router against random and prompt-length baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from router.training.dataset import RoutingRecord
from router.training.metrics import (
    budget_scores,
    calibration_scores,
    gap_label,
    routing_scores,
    spearman,
)
from router.training.targets import EVAL_PAIRS, build_targets

Array = npt.NDArray[np.float64]
RANDOM_SEEDS = 20  # the random router's APGR is averaged over this many draws


@dataclass(frozen=True)
class Predictions:
    """Per-record outputs of one method on an evaluation split."""

    name: str
    demand: Array
    p50: Array
    p90: Array
    # Whether demand is meant as a probability of the pair label (ECE and Brier are scored);
    # the length baseline's demand is a log length, a ranking only.
    probability: bool = True
    # Whether p50 / p90 are predictions (budget cells are scored); a peer router has none.
    budget: bool = True

    def subset(self, idx: Sequence[int]) -> Predictions:
        """The same method's outputs on the records at idx, in that order."""
        rows = np.asarray(idx, dtype=np.int64)
        return replace(self, demand=self.demand[rows], p50=self.p50[rows], p90=self.p90[rows])


def _weighted_quantile(values: Array, weights: Array, q: float) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def length_baseline(
    train: Sequence[RoutingRecord], records: Sequence[RoutingRecord]
) -> Predictions:
    """Longer prompt = more demand; budget = log-linear fit on length plus residual quantiles."""
    t = build_targets(train, [])
    mask = t.budget_weight > 0
    x = np.log1p([len(r.prompt) for r in train])[mask]
    w = t.budget_weight[mask]
    slope, icpt = np.polyfit(x, t.log_budget[mask], 1, w=np.sqrt(w))
    resid = t.log_budget[mask] - (slope * x + icpt)
    q50, q90 = (_weighted_quantile(resid, w, q) for q in (0.5, 0.9))
    lx = np.log1p([len(r.prompt) for r in records])
    mu = slope * lx + icpt
    return Predictions(
        "length",
        np.asarray(lx, dtype=np.float64),
        np.exp(mu + q50),
        np.exp(mu + q90),
        probability=False,
    )


def random_baseline(
    train: Sequence[RoutingRecord], records: Sequence[RoutingRecord], seed: int
) -> Predictions:
    """Uniform random demand; budget = the train median and 90th percentile for every prompt."""
    t = build_targets(train, [])
    mask = t.budget_weight > 0
    q50, q90 = (
        _weighted_quantile(t.log_budget[mask], t.budget_weight[mask], q) for q in (0.5, 0.9)
    )
    n = len(records)
    demand = np.random.default_rng(seed).random(n)
    return Predictions(
        f"random(seed={seed})", demand, np.full(n, np.exp(q50)), np.full(n, np.exp(q90))
    )


def _pair_arrays(
    records: Sequence[RoutingRecord], idx: Sequence[int]
) -> tuple[Array, Array, Array]:
    keep, weak, strong = [], [], []
    for i in idx:
        pair = EVAL_PAIRS.get(records[i].source)
        if pair and all(m in records[i].outcomes for m in pair):
            keep.append(i)
            weak.append(records[i].outcomes[pair[0]])
            strong.append(records[i].outcomes[pair[1]])
    return np.array(keep, dtype=np.int64), np.array(weak), np.array(strong)


def routing_cells(
    demand: Array, weak: Array, strong: Array, probability: bool
) -> dict[str, object]:
    """APGR, CPTs and AUC of one method on one pair; ECE, its floor and Brier if a probability."""
    scores = routing_scores(demand, weak, strong)
    cells: dict[str, object] = {
        "apgr": scores.apgr,
        "cpt50": scores.cpt50,
        "cpt80": scores.cpt80,
        "auc": scores.auc,
    }
    if probability:
        cal = calibration_scores(demand, gap_label(weak, strong))
        cells.update(ece=cal.ece, ece_floor=cal.ece_floor, brier=cal.brier)
    return cells


def budget_cells(p50: Array, p90: Array, actual: Array) -> dict[str, object]:
    """Within-2x share, median |log2| error and p90 coverage against actual answer lengths."""
    b = budget_scores(p50, p90, actual)
    return {"within_2x": b.within_2x, "med_log2": b.median_abs_log2, "p90_cov": b.p90_coverage}


def score_rows(
    records: Sequence[RoutingRecord],
    preds: Sequence[Predictions],
    groups: dict[str, list[int]],
) -> list[dict[str, object]]:
    """One row per (group, method) with routing and budget metrics (NaN where not scorable)."""
    targets = build_targets(records, [])
    rows: list[dict[str, object]] = []
    for group, idx in groups.items():
        keep, weak, strong = _pair_arrays(records, idx)
        bud = np.array([i for i in idx if targets.budget_weight[i] > 0], dtype=np.int64)
        level = np.array(
            [i for i in idx if records[i].source == "math" and records[i].difficulty is not None]
        )
        for pred in preds:
            row: dict[str, object] = {
                "group": group,
                "method": pred.name,
                "n": len(idx),
            }
            if len(keep) > 1:
                row.update(routing_cells(pred.demand[keep], weak, strong, pred.probability))
            if len(level) > 1:
                lv = np.array([records[i].difficulty for i in level], dtype=np.float64)
                row["rho_level"] = spearman(pred.demand[level], lv)
            if len(bud) and pred.budget:
                actual = np.exp(targets.log_budget[bud])
                row.update(budget_cells(pred.p50[bud], pred.p90[bud], actual))
            rows.append(row)
    return rows


def index_groups(keys: Sequence[str], overall: bool = True) -> dict[str, list[int]]:
    """Indices per key, in key order, plus 'overall' (every index) unless overall is False."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    groups = dict(sorted(groups.items()))
    if overall:
        groups["overall"] = list(range(len(keys)))
    return groups


def source_groups(records: Sequence[RoutingRecord]) -> dict[str, list[int]]:
    """Indices per source, plus 'overall'."""
    return index_groups([rec.source for rec in records])


def average_random(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Collapse the random-seed rows of each group into one 'random' row (mean of metrics)."""
    out: list[dict[str, object]] = []
    pending: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        if str(row["method"]).startswith("random("):
            pending.setdefault(str(row["group"]), []).append(row)
            continue
        out.append(row)
    for group, group_rows in pending.items():
        merged: dict[str, object] = {
            "group": group,
            "method": "random",
            "n": group_rows[0]["n"],
        }
        for key in group_rows[0]:
            if key not in merged:
                merged[key] = float(np.mean([float(str(r[key])) for r in group_rows]))
        out.append(merged)
    order = {g: k for k, g in enumerate(dict.fromkeys(str(r["group"]) for r in rows))}
    return sorted(
        out,
        key=lambda r: (
            order[str(r["group"])],
            str(r["method"]) != "router",
            str(r["method"]),
        ),
    )


COLUMNS: tuple[str, ...] = (
    "group",
    "method",
    "n",
    "apgr",
    "cpt50",
    "cpt80",
    "auc",
    "ece",
    "ece_floor",
    "brier",
    "rho_level",
    "within_2x",
    "med_log2",
    "p90_cov",
)


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Render metric rows as a markdown table; blanks where a metric does not apply."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for col in COLUMNS:
            value = row.get(col)
            cells.append(
                f"{value:.3f}"
                if isinstance(value, float)
                else ("" if value is None else str(value))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(
    train: Sequence[RoutingRecord],
    dev: Sequence[RoutingRecord],
    router_preds: Predictions,
    peers: Sequence[Predictions] = (),
) -> list[dict[str, object]]:
    """Metrics per source and overall for the router, both baselines and any peer routers."""
    preds = [router_preds, length_baseline(train, dev), *peers]
    preds += [random_baseline(train, dev, seed) for seed in range(RANDOM_SEEDS)]
    return average_random(score_rows(dev, preds, source_groups(dev)))
