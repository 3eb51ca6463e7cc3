"""The typed value the router returns for one prompt."""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = (
    "math",
    "code",
    "reasoning",
    "knowledge",
    "writing",
    "chat",
)


@dataclass(frozen=True)
class Estimate:
    """Reasoning demand in [0, 1], answer-length quantiles in cl100k tokens, and a category."""

    reasoning_demand: float
    token_budget_p50: int
    token_budget_p90: int
    category: str

    def as_dict(self) -> dict[str, float | int | str]:
        """Return the fields as a JSON-ready dict."""
        return {
            "reasoning_demand": round(self.reasoning_demand, 4),
            "token_budget_p50": self.token_budget_p50,
            "token_budget_p90": self.token_budget_p90,
            "category": self.category,
        }
