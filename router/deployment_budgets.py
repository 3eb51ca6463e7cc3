"""Token budgets per deployment: the heads' p50 / p90 moved to a deployment's own answer lengths.

Written by `rightsize tune --spend-log` into router.json as `deployment_budgets`:

    {"gpt-4o": {"*": {"p50": 0.31, "p90": 0.42}, "code": {"p50": 0.55, "p90": 0.61}}}

Each value is a shift in natural-log tokens of the heads' budget; "*" serves the deployment's
other categories. An artifact without the block (every artifact before it) budgets as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from router.estimate import Estimate

ANY_CATEGORY = "*"
MANIFEST_KEY = "deployment_budgets"


@dataclass(frozen=True)
class BudgetShift:
    """Log shifts of p50 and p90 (0: the heads' budget)."""

    p50: float = 0.0
    p90: float = 0.0


@dataclass(frozen=True)
class DeploymentBudgets:
    """Per deployment (and category) log shifts of the heads' budgets; empty: none."""

    shifts: Mapping[str, Mapping[str, BudgetShift]] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> DeploymentBudgets:
        """The manifest's `deployment_budgets` block (absent: no shifts)."""
        block = manifest.get(MANIFEST_KEY) or {}
        return cls(
            {
                str(deployment): {
                    str(category): BudgetShift(float(v["p50"]), float(v["p90"]))
                    for category, v in categories.items()
                }
                for deployment, categories in block.items()
            }
        )

    def as_manifest(self) -> dict[str, dict[str, dict[str, float]]]:
        """The JSON block router.json keeps (rounded, so that rewriting gives the same bytes)."""
        return {
            deployment: {
                category: {"p50": round(s.p50, 6), "p90": round(s.p90, 6)}
                for category, s in sorted(categories.items())
            }
            for deployment, categories in sorted(self.shifts.items())
        }

    def shift(self, deployment: str, category: str) -> BudgetShift | None:
        """The shift for a deployment's category, else its "*" one; None: the heads' budget."""
        categories = self.shifts.get(deployment)
        if categories is None:
            return None
        return categories.get(category) or categories.get(ANY_CATEGORY)

    def apply(self, estimate: Estimate, deployment: str) -> Estimate:
        """The estimate with the deployment's budgets (whole tokens, p90 >= p50 >= 1)."""
        found = self.shift(deployment, estimate.category)
        if found is None:
            return estimate
        p50 = max(1, round(estimate.token_budget_p50 * math.exp(found.p50)))
        p90 = max(p50, round(estimate.token_budget_p90 * math.exp(found.p90)))
        return replace(estimate, token_budget_p50=p50, token_budget_p90=p90)
