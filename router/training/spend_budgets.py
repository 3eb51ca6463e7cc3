"""Token budgets refitted per deployment on logged traffic: `rightsize tune --spend-log`.

Every served request is a free label of answer length: the spend log keeps the heads' p50 / p90
of the prompt, its category, the deployment that answered and its completion tokens, but not
the prompt. So the refit does not retrain the budget heads on prompts; it calibrates their
output per deployment: a shift in log tokens of p50 (the median of log(actual / p50)) and of
p90 (so that 90% of answers fit), per deployment and, shrunk toward it, per category. The
deployment's shift is shrunk toward the base (no shift) by its row count, n / (n + k), each
category's toward its deployment's by n_c / (n_c + k); k is chosen by cross-validation of the
pinball losses of log p50 and log p90. A deployment keeps the base budgets unless its held-out
loss is lower beyond noise (the bootstrap's 95% lower bound of the gain above zero).

This module reads no database: the gateway reads the spend log (gateway/cli/spend_tune.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.artifact import artifact_id, read_manifest, write_manifest
from router.deployment_budgets import (
    ANY_CATEGORY,
    MANIFEST_KEY,
    BudgetShift,
    DeploymentBudgets,
)

Array = npt.NDArray[np.float64]
P90_TARGET = 0.9
STRENGTHS: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
CONFIDENCE = 0.95
REPORT_COLUMNS: tuple[str, ...] = (
    "p90_cov_before",
    "p90_cov_after",
    "p50_hit_before",
    "p50_hit_after",
    "mae_log_before",
    "mae_log_after",
)


@dataclass(frozen=True)
class LoggedAnswer:
    """One served request as the spend log kept it: the heads' budgets and the answer's length."""

    deployment: str
    category: str
    p50: int
    p90: int
    completion_tokens: int


@dataclass(frozen=True)
class SpendTuneConfig:
    """Folds, the strengths tried, rows a deployment needs, bootstrap draws, seed."""

    folds: int = 5
    strengths: tuple[float, ...] = STRENGTHS
    min_rows: int = 30
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class DeploymentFit:
    """One deployment's verdict: its shifts (None: the base kept), strength, why, and figures."""

    deployment: str
    rows: int
    accepted: bool
    strength: float | None
    shifts: dict[str, BudgetShift] | None
    reason: str
    report: dict[str, object]


@dataclass(frozen=True)
class SpendTuneOutcome:
    """Every deployment's fit and the budgets the new artifact carries."""

    fits: list[DeploymentFit]
    budgets: DeploymentBudgets
    rows: int


def _pinball(residual: Array, q: float) -> Array:
    return np.maximum(q * residual, (q - 1.0) * residual)


def _loss(r50: Array, r90: Array) -> Array:
    """Per row: pinball loss of log p50 (q 0.5) plus that of log p90 (q 0.9), in log tokens."""
    return _pinball(r50, 0.5) + _pinball(r90, P90_TARGET)


def fit_shifts(
    r50: Array, r90: Array, categories: npt.NDArray[np.str_], strength: float
) -> dict[str, BudgetShift]:
    """Shrunk log shifts: the deployment's toward 0, each category's toward the deployment's."""
    n = len(r50)
    weight = n / (n + strength)
    s50 = weight * float(np.median(r50))
    s90 = weight * float(np.quantile(r90, P90_TARGET))
    out = {ANY_CATEGORY: BudgetShift(s50, s90)}
    for category in sorted(set(categories.tolist())):
        ix = categories == category
        n_c = int(ix.sum())
        w = n_c / (n_c + strength)
        out[category] = BudgetShift(
            s50 + w * (float(np.median(r50[ix])) - s50),
            s90 + w * (float(np.quantile(r90[ix], P90_TARGET)) - s90),
        )
    return out


def _shifted(
    shifts: dict[str, BudgetShift], categories: npt.NDArray[np.str_]
) -> tuple[Array, Array]:
    """Each row's (p50, p90) log shift under the shifts."""
    pick = [shifts.get(c, shifts[ANY_CATEGORY]) for c in categories.tolist()]
    return np.array([s.p50 for s in pick]), np.array([s.p90 for s in pick])


def _budgets(p50: Array, p90: Array, d50: Array, d90: Array) -> tuple[Array, Array]:
    # As the gateway applies them (router.deployment_budgets): whole tokens, p90 >= p50 >= 1.
    new50 = np.maximum(1.0, np.round(p50 * np.exp(d50)))
    return new50, np.maximum(new50, np.round(p90 * np.exp(d90)))


def _figures(p50: Array, p90: Array, actual: Array) -> Array:
    """p90 coverage, p50 hit (answer within 2x of p50), mean |log(actual / p50)|."""
    err = np.abs(np.log(actual / p50))
    return np.array([np.mean(actual <= p90), np.mean(err <= np.log(2.0)), np.mean(err)])


def _interval(point: float, values: Array) -> tuple[float, float, float]:
    tail = (1.0 - CONFIDENCE) / 2.0
    return point, float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def fit_deployment(
    deployment: str,
    categories: npt.NDArray[np.str_],
    p50: Array,
    p90: Array,
    actual: Array,
    cfg: SpendTuneConfig,
) -> DeploymentFit:
    """Choose the strength by cross-validation, guard, and report before / after out of fold."""
    n = len(actual)
    rng = np.random.default_rng(cfg.seed)
    r50, r90 = np.log(actual / p50), np.log(actual / p90)
    after50, after90 = p50, p90
    strength: float | None = None
    shifts: dict[str, BudgetShift] | None = None
    if n < max(cfg.min_rows, cfg.folds):
        reason = f"{n} rows, fewer than {cfg.min_rows}: base budgets kept"
    else:
        fold = rng.permutation(n) % cfg.folds
        best: tuple[float, float, Array, Array] | None = None
        for k in cfg.strengths:
            d50, d90 = np.empty(n), np.empty(n)
            for f in range(cfg.folds):
                tr, te = fold != f, fold == f
                d50[te], d90[te] = _shifted(
                    fit_shifts(r50[tr], r90[tr], categories[tr], k), categories[te]
                )
            loss = float(np.mean(_loss(r50 - d50, r90 - d90)))
            if best is None or loss < best[0]:
                best = (loss, k, d50, d90)
        assert best is not None  # strengths is not empty
        _, k, d50, d90 = best
        gain = _loss(r50, r90) - _loss(r50 - d50, r90 - d90)
        boot = rng.integers(0, n, size=(cfg.bootstrap, n))
        low = float(np.quantile(gain[boot].mean(axis=1), 1.0 - CONFIDENCE))
        if low > 0.0:
            strength, shifts = k, fit_shifts(r50, r90, categories, k)
            after50, after90 = _budgets(p50, p90, d50, d90)
            whole = shifts[ANY_CATEGORY]
            reason = (
                f"tuned (strength {k:g}): p50 x{np.exp(whole.p50):.2f}, "
                f"p90 x{np.exp(whole.p90):.2f}; held-out loss gain {gain.mean():+.3f} "
                f"(95% lower bound {low:+.3f})"
            )
        else:
            reason = (
                f"base budgets kept: no held-out gain beyond noise (strength {k:g}, gain "
                f"{gain.mean():+.3f}, 95% lower bound {low:+.3f})"
            )
    report: dict[str, object] = {"group": deployment, "n": n}
    boot = rng.integers(0, n, size=(cfg.bootstrap, n))
    for when, b50, b90 in (("before", p50, p90), ("after", after50, after90)):
        point = _figures(b50, b90, actual)
        draws = np.array([_figures(b50[d], b90[d], actual[d]) for d in boot])
        for i, name in enumerate(("p90_cov", "p50_hit", "mae_log")):
            report[f"{name}_{when}"] = _interval(float(point[i]), draws[:, i])
    return DeploymentFit(deployment, n, shifts is not None, strength, shifts, reason, report)


def tune_spend_log(
    answers: Sequence[LoggedAnswer],
    base: DeploymentBudgets,
    config: SpendTuneConfig | None = None,
    progress: Callable[[DeploymentFit, int, int], None] | None = None,
) -> SpendTuneOutcome:
    """Fit every deployment of the rows; the base's budgets stay wherever the guard keeps them."""
    cfg = config or SpendTuneConfig()
    names = sorted({a.deployment for a in answers})
    shifts = {d: dict(c) for d, c in base.shifts.items()}
    fits: list[DeploymentFit] = []
    for number, name in enumerate(names, start=1):
        rows = [a for a in answers if a.deployment == name]
        fit = fit_deployment(
            name,
            np.array([a.category for a in rows], dtype=np.str_),
            np.array([a.p50 for a in rows], dtype=np.float64),
            np.array([max(a.p90, a.p50) for a in rows], dtype=np.float64),
            np.array([a.completion_tokens for a in rows], dtype=np.float64),
            cfg,
        )
        if fit.shifts is not None:
            # The log holds the heads' budgets, so the refit replaces an earlier one.
            shifts[name] = fit.shifts
        fits.append(fit)
        if progress is not None:
            progress(fit, number, len(names))
    return SpendTuneOutcome(fits, DeploymentBudgets(shifts), len(answers))


def report_table(fits: Sequence[DeploymentFit]) -> str:
    """Markdown, a row per deployment: each cell `point [low, high]` (95% bootstrap)."""
    head = ("deployment", "n", "verdict", *REPORT_COLUMNS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fit in fits:
        cells = [fit.deployment, str(fit.rows), "tuned" if fit.accepted else "base kept"]
        for col in REPORT_COLUMNS:
            value = fit.report[col]
            assert isinstance(value, tuple)
            cells.append(f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuned_budgets_block(
    outcome: SpendTuneOutcome, base_dir: Path, date: str, source: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's record of the refit: base, rows, date, the rows' filters, each verdict."""
    return {
        "base_artifact": artifact_id(base_dir),
        "date": date,
        "rows": outcome.rows,
        "source": source,
        "deployments": {
            f.deployment: {
                "rows": f.rows,
                "accepted": f.accepted,
                "strength": f.strength,
                "reason": f.reason,
            }
            for f in outcome.fits
        },
    }


def write_spend_tuned_artifact(
    base_dir: Path, out_dir: Path, outcome: SpendTuneOutcome, block: dict[str, Any]
) -> None:
    """Copy the base artifact to out_dir with the budgets per deployment and their record."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; tune writes a new artifact directory")
    shutil.copytree(base_dir, out_dir, dirs_exist_ok=True)
    manifest = read_manifest(out_dir)
    manifest[MANIFEST_KEY] = outcome.budgets.as_manifest()
    manifest["tuned_budgets"] = block
    write_manifest(out_dir, manifest)
    card = out_dir / "MODEL_CARD.md"
    text = card.read_text(encoding="utf-8") if card.exists() else "# Rightsize router\n"
    card.write_text(text.rstrip("\n") + "\n\n" + _card_section(outcome, block), encoding="utf-8")


def _card_section(outcome: SpendTuneOutcome, block: dict[str, Any]) -> str:
    source = ", ".join(f"{k}: {v}" for k, v in block["source"].items() if v is not None)
    lines = [
        f"## Budgets per deployment, from the spend log ({block['date']})",
        "",
        f"- Base artifact: `{block['base_artifact']}`; the heads are the base's, only their "
        "token budgets are moved per deployment (and category) in `router.json`.",
        f"- Rows: {block['rows']} logged answers ({source}).",
        "- Per deployment: log shifts of p50 / p90 shrunk toward the base by row count, the "
        "strength chosen by 5-fold cross-validation of pinball loss; kept only if the held-out "
        "gain's 95% bootstrap lower bound is above zero.",
        "",
    ]
    lines += [f"- `{f.deployment}`: {f.reason}." for f in outcome.fits]
    lines += [
        "",
        "Before / after (after = out of fold; p50 hit = answer within 2x of p50; 95% bootstrap "
        "intervals):",
        "",
        report_table(outcome.fits),
        "",
    ]
    return "\n".join(lines)
