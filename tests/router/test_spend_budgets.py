"""Budgets per deployment: the artifact block, how an estimate takes it, and the guarded refit."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from router import Estimate, Router
from router.artifact import default_artifact_dir, read_manifest, write_manifest
from router.deployment_budgets import ANY_CATEGORY, BudgetShift, DeploymentBudgets
from router.training.spend_budgets import LoggedAnswer, SpendTuneConfig, tune_spend_log

FAST = SpendTuneConfig(bootstrap=300)
CATEGORIES = ("chat", "math", "code")


def answers(deployment: str, shift: float, n: int, seed: int) -> list[LoggedAnswer]:
    """Logged rows whose answers are the heads' p50 times exp(shift), with log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p50 = int(rng.integers(40, 600))
        actual = max(1, round(p50 * math.exp(shift + 0.3 * rng.standard_normal())))
        rows.append(LoggedAnswer(deployment, CATEGORIES[i % 3], p50, round(p50 * 2.5), actual))
    return rows


def test_the_shipped_artifact_has_no_budgets_per_deployment_and_estimates_as_before() -> None:
    router = Router.load()
    estimate = router.estimate("Write a haiku about autumn leaves.")
    assert router.deployment_budgets.shifts == {}
    assert router.budget_for(estimate, "any-deployment") is estimate
    assert "deployment_budgets" not in read_manifest(default_artifact_dir())


def test_an_artifact_with_budgets_moves_only_its_deployments_budgets(tmp_path: Path) -> None:
    shutil.copytree(default_artifact_dir(), tmp_path, dirs_exist_ok=True)
    budgets = DeploymentBudgets(
        {"big": {ANY_CATEGORY: BudgetShift(math.log(2), math.log(3)), "math": BudgetShift(0, 0)}}
    )
    manifest = read_manifest(tmp_path)
    manifest["deployment_budgets"] = budgets.as_manifest()
    write_manifest(tmp_path, manifest)
    router = Router.load(tmp_path)
    assert router.deployment_budgets.as_manifest() == budgets.as_manifest()
    chat = Estimate(0.2, 100, 250, "chat")
    assert router.budget_for(chat, "big") == Estimate(0.2, 200, 750, "chat")
    math_estimate = Estimate(0.2, 100, 250, "math")
    assert router.budget_for(math_estimate, "big") == math_estimate
    assert router.budget_for(chat, "small") == chat


def test_a_shrunk_budget_keeps_p90_at_or_above_p50_and_one_token() -> None:
    budgets = DeploymentBudgets({"d": {ANY_CATEGORY: BudgetShift(-10.0, -20.0)}})
    assert budgets.apply(Estimate(0.5, 100, 250, "chat"), "d") == Estimate(0.5, 1, 1, "chat")


def test_the_refit_recovers_each_deployments_shift() -> None:
    rows = answers("big", 0.7, 300, 0) + answers("small", -0.5, 300, 1)
    outcome = tune_spend_log(rows, DeploymentBudgets(), FAST)
    assert [f.accepted for f in outcome.fits] == [True, True]
    for name, shift in (("big", 0.7), ("small", -0.5)):
        found = outcome.budgets.shift(name, "other")
        assert found is not None and abs(found.p50 - shift) < 0.1
        # p90 goes where 90% of answers fit: shift - log(2.5) + 0.3 * z(0.9).
        assert abs(found.p90 - (shift - math.log(2.5) + 0.3 * 1.2816)) < 0.12
    fit = outcome.fits[0]
    mae_before, mae_after = fit.report["mae_log_before"], fit.report["mae_log_after"]
    assert isinstance(mae_before, tuple) and isinstance(mae_after, tuple)
    assert mae_after[2] < mae_before[1]  # intervals apart: the tuned budgets are better


def test_a_category_that_differs_gets_its_own_shift_shrunk_toward_the_deployments() -> None:
    rows = answers("big", 0.0, 300, 2)
    rows = [
        LoggedAnswer(r.deployment, r.category, r.p50, r.p90, r.completion_tokens * 4)
        if r.category == "code"
        else r
        for r in rows
    ]
    outcome = tune_spend_log(rows, DeploymentBudgets(), FAST)
    code, chat = outcome.budgets.shift("big", "code"), outcome.budgets.shift("big", "chat")
    assert code is not None and chat is not None
    assert code.p50 - chat.p50 > math.log(4) * 0.7


def test_a_deployment_already_calibrated_keeps_the_base_budgets() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(200):
        p50 = int(rng.integers(40, 600))
        actual = max(1, round(p50 * math.exp(0.3 * rng.standard_normal())))
        p90 = round(p50 * math.exp(0.3 * 1.2816))
        rows.append(LoggedAnswer("calibrated", CATEGORIES[i % 3], p50, p90, actual))
    base = DeploymentBudgets({"calibrated": {ANY_CATEGORY: BudgetShift(0.01, 0.02)}})
    outcome = tune_spend_log(rows, base, FAST)
    assert not outcome.fits[0].accepted
    assert "base budgets kept" in outcome.fits[0].reason
    assert outcome.budgets == base


def test_with_few_rows_a_deployment_keeps_the_base_without_fitting() -> None:
    outcome = tune_spend_log(answers("big", 1.5, 5, 0), DeploymentBudgets(), FAST)
    assert outcome.budgets == DeploymentBudgets()
    assert outcome.fits[0].reason == "5 rows, fewer than 30: base budgets kept"
