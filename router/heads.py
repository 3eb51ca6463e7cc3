"""The three heads as plain arrays: inference needs numpy only, storage is JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.estimate import CATEGORIES, Estimate

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Heads:
    """Linear heads over standardised [embedding, features]."""

    input_mean: Array  # over [embedding, features]
    input_scale: Array
    demand_coef: Array  # (n_categories, d): one row per predicted category
    demand_intercept: Array  # (n_categories,): centres each category's raw score on zero
    demand_platt: Array  # (2,): calibrated logit = a * raw + b + category offset
    demand_category_offset: Array  # (n_categories,)
    budget_coef: Array  # (d,) -> mean log tokens
    budget_intercept: float
    budget_offsets: Array  # (n_categories, 2): residual p50 / p90 per predicted category
    category_coef: Array  # (n_categories, d)
    category_intercept: Array  # (n_categories,)

    def design(
        self, embeddings: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> Array:
        """Concatenate embeddings with features and standardise every column."""
        raw = np.hstack([embeddings.astype(np.float64), features.astype(np.float64)])
        return (raw - self.input_mean) / self.input_scale

    def demand(self, x: Array, category: npt.NDArray[np.int64]) -> Array:
        """Calibrated probability that the small model fails where the strong one succeeds."""
        raw = np.einsum("nd,nd->n", x, self.demand_coef[category]) + self.demand_intercept[category]
        logit = (
            self.demand_platt[0] * raw
            + self.demand_platt[1]
            + self.demand_category_offset[category]
        )
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0))), dtype=np.float64)

    def category(self, x: Array) -> npt.NDArray[np.int64]:
        """Index into CATEGORIES of the most likely category."""
        return np.asarray(
            np.argmax(x @ self.category_coef.T + self.category_intercept, axis=1),
            dtype=np.int64,
        )

    def budget(self, x: Array, category: npt.NDArray[np.int64]) -> tuple[Array, Array]:
        """p50 and p90 answer length in tokens."""
        mean_log = x @ self.budget_coef + self.budget_intercept
        offsets = self.budget_offsets[category]
        return np.exp(mean_log + offsets[:, 0]), np.exp(mean_log + offsets[:, 1])

    def estimates(
        self, embeddings: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> list[Estimate]:
        """Run all heads and package one Estimate per row."""
        x = self.design(embeddings, features)
        cats = self.category(x)
        demand = self.demand(x, cats)
        p50, p90 = self.budget(x, cats)
        return [
            Estimate(
                reasoning_demand=float(d),
                token_budget_p50=max(1, round(a)),
                token_budget_p90=max(1, round(max(a, b))),
                category=CATEGORIES[int(c)],
            )
            for d, a, b, c in zip(demand, p50, p90, cats, strict=True)
        ]

    def to_json(self) -> dict[str, Any]:
        """Plain lists of floats; repr-exact, so a JSON round trip is lossless."""
        return {name: _plain(getattr(self, name)) for name in _FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Heads:
        """Rebuild heads from to_json() output."""
        values: dict[str, Any] = {
            name: float(data[name])
            if isinstance(data[name], float)
            else np.asarray(data[name], dtype=np.float64)
            for name in _FIELDS
        }
        if values["demand_coef"].ndim == 1:
            # Format 1 artifacts had one demand vector and intercept shared by every category.
            values["demand_coef"] = np.tile(values["demand_coef"], (len(CATEGORIES), 1))
            values["demand_intercept"] = np.full(len(CATEGORIES), values["demand_intercept"])
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the heads as JSON (no pickles: loading runs no code)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, separators=(",", ":"))
            handle.write("\n")

    @classmethod
    def load(cls, path: Path) -> Heads:
        """Read heads written by save()."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(json.load(handle))


_FIELDS: tuple[str, ...] = tuple(Heads.__dataclass_fields__)


def _plain(value: Array | float) -> list[Any] | float:
    return value.tolist() if isinstance(value, np.ndarray) else float(value)
