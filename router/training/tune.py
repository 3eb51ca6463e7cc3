"""Adapt an artifact to a deployment's own outcomes: `rightsize tune --pairs FILE --out DIR`.

Reads an `eval --pairs` file, fits the guarded demand residual (router/training/residual.py)
and, from rows with `strong_tokens`, the guarded budget shifts (router/training/budget_shift.py)
on the chosen runtime's heads, and writes a complete artifact: a copy of the base with the
tuned heads, a `tuned` block in router.json and a "Tuned" section in MODEL_CARD.md. Before and
after figures are out of fold (the tuned router never scores rows it was fitted on).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.artifact import artifact_id, read_manifest, write_manifest
from router.features import features_batch
from router.heads import Heads
from router.router import Router
from router.training.budget_shift import BudgetShift, fit_budget_shift
from router.training.evaluate import index_groups
from router.training.metrics import budget_scores, routing_scores
from router.training.pairs import PairRow
from router.training.residual import (
    GuardResult,
    ResidualConfig,
    apgr_cpt50,
    bootstrap_indices,
    cross_validate,
)

Array = npt.NDArray[np.float64]
REPORT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class TuneInputs:
    """What the residual reads of each row, computed once through the base heads."""

    x: Array  # standardised [embedding, features] (no neighbour column)
    base_logit: Array
    weak: Array
    strong: Array
    tokens: Array  # NaN where the row has none
    p50: Array
    p90: Array
    groups: list[str]


@dataclass(frozen=True)
class TuneOutcome:
    """The guards' verdicts, the tuned heads (the base ones if both kept the base), the report."""

    guard: GuardResult
    budget: BudgetShift
    heads: Heads
    report: list[dict[str, object]]
    rows: int


def base_width(heads: Heads) -> int:
    """Columns of the design the residual reads: embedding and features, not the neighbours."""
    return len(heads.input_mean) - (1 if heads.neighbours is not None else 0)


def tune_inputs(router: Router, rows: Sequence[PairRow], batch_size: int = 512) -> TuneInputs:
    """Design rows, base logits and budgets of every row under the router's heads."""
    heads = router.heads
    parts: list[tuple[Array, Array, Array, Array]] = []
    for start in range(0, len(rows), batch_size):
        prompts = [r.prompt for r in rows[start : start + batch_size]]
        x = heads.design(router.embed_batch(prompts), features_batch(prompts, heads.feature_set))
        cats = heads.category(x)
        p50, p90 = heads.budget(x, cats)
        parts.append((x, heads.demand_logit(x, cats), p50, np.maximum(p50, p90)))
    x = np.vstack([p[0] for p in parts])
    return TuneInputs(
        x=x[:, : base_width(heads)],
        base_logit=np.concatenate([p[1] for p in parts]),
        weak=np.array([r.weak for r in rows]),
        strong=np.array([r.strong for r in rows]),
        tokens=np.array([np.nan if r.strong_tokens is None else r.strong_tokens for r in rows]),
        # The gateway's budgets are whole tokens (Estimate rounds them).
        p50=np.maximum(1.0, np.round(np.concatenate([p[2] for p in parts]))),
        p90=np.maximum(1.0, np.round(np.concatenate([p[3] for p in parts]))),
        groups=[r.group for r in rows],
    )


def compose(heads: Heads, theta: Array) -> Heads:
    """Heads whose demand logit adds the fitted residual to theirs (an earlier one included)."""
    width = len(heads.input_mean)
    weights = np.zeros(width)
    weights[: len(theta) - 2] = theta[:-2]
    slope, intercept = theta[-2], theta[-1]
    old = heads.demand_residual
    if old is not None:
        # (1 + s)((1 + s0) L + w0 . x + b0) + w . x + b, as one residual on the trained logit.
        weights = (1.0 + slope) * old[:-2] + weights
        intercept = (1.0 + slope) * old[-1] + intercept
        slope = (1.0 + slope) * (1.0 + old[-2]) - 1.0
    return replace(heads, demand_residual=np.concatenate([weights, [slope, intercept]]))


def tune(
    router: Router,
    rows: Sequence[PairRow],
    config: ResidualConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> TuneOutcome:
    """Fit the guarded residual on the rows; report before/after out of fold, per group."""
    cfg = config or ResidualConfig()
    inputs = tune_inputs(router, rows)
    guard = cross_validate(
        inputs.x,
        inputs.base_logit,
        inputs.weak,
        inputs.strong,
        cfg,
        progress=progress,
        groups=inputs.groups,
    )
    heads = router.heads if guard.theta is None else compose(router.heads, guard.theta)
    after = inputs.base_logit if guard.oof_logit is None or not guard.accepted else guard.oof_logit
    timed = np.isfinite(inputs.tokens)
    budget = fit_budget_shift(
        inputs.p50[timed],
        inputs.p90[timed],
        inputs.tokens[timed],
        draws=cfg.bootstrap,
        groups=[g for g, t in zip(inputs.groups, timed, strict=True) if t],
    )
    if budget.p50 or budget.p90:
        shift = np.array([budget.p50, budget.p90])
        heads = replace(heads, budget_offsets=heads.budget_offsets + shift)
    after_p50, after_p90 = inputs.p50.copy(), inputs.p90.copy()
    if budget.oof_p50 is not None and budget.oof_p90 is not None:
        after_p50[timed] = np.maximum(1.0, np.round(budget.oof_p50))
        after_p90[timed] = np.maximum(after_p50[timed], np.round(budget.oof_p90))
    return TuneOutcome(
        guard=guard,
        budget=budget,
        heads=heads,
        report=before_after(inputs, after, after_p50, after_p90, cfg.bootstrap, cfg.seed),
        rows=len(rows),
    )


def _cells(values: Array, point: float) -> tuple[float, float, float]:
    tail = (1.0 - REPORT_CONFIDENCE) / 2.0
    return point, float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def before_after(
    inputs: TuneInputs, after: Array, after_p50: Array, after_p90: Array, draws: int, seed: int
) -> list[dict[str, object]]:
    """APGR, CPT(50%) and budget figures before/after, each with a 95% bootstrap interval."""
    out: list[dict[str, object]] = []
    groups = index_groups(inputs.groups, overall=len(set(inputs.groups)) > 1)
    for group, idx in groups.items():
        ix = np.asarray(idx)
        weak, strong = inputs.weak[ix], inputs.strong[ix]
        row: dict[str, object] = {"group": group, "n": len(ix)}
        if len(ix) > 1:
            boot = bootstrap_indices(len(ix), draws, seed + 2)
            base, tuned = inputs.base_logit[ix], after[ix]
            b = np.array([apgr_cpt50(base[d], weak[d], strong[d]) for d in boot])
            t = np.array([apgr_cpt50(tuned[d], weak[d], strong[d]) for d in boot])
            before_s, after_s = (
                routing_scores(base, weak, strong),
                routing_scores(tuned, weak, strong),
            )
            row["apgr_before"] = _cells(b[:, 0], before_s.apgr)
            row["apgr_after"] = _cells(t[:, 0], after_s.apgr)
            row["apgr_gain"] = _cells(t[:, 0] - b[:, 0], after_s.apgr - before_s.apgr)
            row["cpt50_before"] = _cells(b[:, 1], before_s.cpt50)
            row["cpt50_after"] = _cells(t[:, 1], after_s.cpt50)
        timed = ix[np.isfinite(inputs.tokens[ix])]
        if len(timed):
            actual = inputs.tokens[timed]
            boot = bootstrap_indices(len(timed), draws, seed + 3)
            for when, p50, p90 in (
                ("before", inputs.p50[timed], inputs.p90[timed]),
                ("after", after_p50[timed], after_p90[timed]),
            ):
                scores = [budget_scores(p50[d], p90[d], actual[d]) for d in boot]
                point = budget_scores(p50, p90, actual)
                row[f"within_2x_{when}"] = _cells(
                    np.array([s.within_2x for s in scores]), point.within_2x
                )
                row[f"p90_cov_{when}"] = _cells(
                    np.array([s.p90_coverage for s in scores]), point.p90_coverage
                )
        out.append(row)
    return out


REPORT_COLUMNS: tuple[str, ...] = (
    "apgr_before",
    "apgr_after",
    "apgr_gain",
    "cpt50_before",
    "cpt50_after",
    "within_2x_before",
    "within_2x_after",
    "p90_cov_before",
    "p90_cov_after",
)


def report_table(report: list[dict[str, object]]) -> str:
    """Markdown: each cell `point [low, high]` (95% bootstrap over the group's rows)."""
    head = ("group", "n", *REPORT_COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report:
        cells = [str(row["group"]), str(row["n"])]
        for col in REPORT_COLUMNS:
            value = row.get(col)
            if isinstance(value, tuple):
                sign = "+" if col == "apgr_gain" else ""
                cells.append(f"{value[0]:{sign}.3f} [{value[1]:{sign}.3f}, {value[2]:{sign}.3f}]")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuned_block(
    outcome: TuneOutcome, base_dir: Path, runtime: str, date: str, pairs_file: str
) -> dict[str, Any]:
    """The manifest's record of the tuning: base, rows, date, strength, CV figures."""
    g = outcome.guard
    return {
        "base_artifact": artifact_id(base_dir),
        "date": date,
        "pairs_file": pairs_file,
        "rows": outcome.rows,
        "runtime": runtime,
        "accepted": g.accepted,
        "reason": g.reason,
        "strength": g.strength,
        "cv_log_loss": {f"{k:g}": round(v, 6) for k, v in sorted(g.cv_log_loss.items())},
        "cv_base_log_loss": None if np.isnan(g.base_log_loss) else round(g.base_log_loss, 6),
        "cv_apgr_base": round(g.oof_apgr_base, 6),
        "cv_apgr_tuned": round(g.oof_apgr_tuned, 6),
        "cv_apgr_gain_interval": [round(v, 6) for v in g.gain_interval],
        "cv_log_loss_gain_interval": [round(v, 6) for v in g.loss_gain_interval],
        "budget_log_shift": {
            "p50": round(outcome.budget.p50, 6),
            "p90": round(outcome.budget.p90, 6),
        },
        "budget_reason": outcome.budget.reason,
    }


def write_tuned_artifact(
    base_dir: Path, out_dir: Path, runtime: str, outcome: TuneOutcome, block: dict[str, Any]
) -> None:
    """Copy the base artifact to out_dir, replace the tuned runtime's heads, record the tuning."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; tune writes a new artifact directory")
    shutil.copytree(base_dir, out_dir, dirs_exist_ok=True)
    manifest = read_manifest(out_dir)
    section = "static" if runtime == "static" else "transformer"
    outcome.heads.save(out_dir / str(manifest[section]["heads"]))
    manifest["tuned"] = block
    write_manifest(out_dir, manifest)
    card = out_dir / "MODEL_CARD.md"
    text = card.read_text(encoding="utf-8") if card.exists() else "# Rightsize router\n"
    card.write_text(text.rstrip("\n") + "\n\n" + _card_section(outcome, block), encoding="utf-8")


def _card_section(outcome: TuneOutcome, block: dict[str, Any]) -> str:
    g = outcome.guard
    losses = ", ".join(f"{k}: {v:.4f}" for k, v in block["cv_log_loss"].items()) or "none"
    base_loss = block["cv_base_log_loss"]
    base_loss_text = "n/a" if base_loss is None else f"{base_loss:.4f}"
    strength = "none" if g.strength is None else f"{g.strength:g}"
    lines = [
        f"## Tuned ({block['date']})",
        "",
        f"- Base artifact: `{block['base_artifact']}`; runtime tuned: `{block['runtime']}` "
        "(the other runtime's heads are the base's).",
        f"- Rows: {block['rows']} from `{block['pairs_file']}`.",
        f"- Verdict: {g.reason}.",
        f"- Strength chosen (L2 penalty on the residual, by out-of-fold log loss): "
        f"{strength}; out-of-fold log loss per strength: {losses}; the base with its "
        f"intercept refitted: {base_loss_text}.",
        f"- Out-of-fold APGR: base {g.oof_apgr_base:.3f}, tuned {g.oof_apgr_tuned:.3f}, gain "
        f"interval [{g.gain_interval[0]:+.3f}, {g.gain_interval[1]:+.3f}] (bootstrap); "
        f"log-loss gain per row interval [{g.loss_gain_interval[0]:+.4f}, "
        f"{g.loss_gain_interval[1]:+.4f}].",
        f"- Token budgets: {outcome.budget.reason} (every category's p50 / p90 offset moved by "
        f"{block['budget_log_shift']['p50']:+.3f} / {block['budget_log_shift']['p90']:+.3f} "
        "in log tokens).",
        "",
        "Before / after on the file (after = out-of-fold; 95% bootstrap intervals):",
        "",
        report_table(outcome.report),
        "",
    ]
    return "\n".join(lines)
