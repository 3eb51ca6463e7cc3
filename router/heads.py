"""The three heads as plain arrays: inference needs numpy only, storage is JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.estimate import CATEGORIES, Estimate

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Neighbours:
    """Demand-labelled training prompts: a prompt's column is its k nearest ones' mean demand.

    Inside MMLU-Pro, what a small model gets wrong clusters by topic more finely than the
    subject; a linear read of the embedding misses it, the neighbours' own labels carry it
    (docs/router.md). The bank is stored as float16; training and inference both read those
    values. Candidates are found in float32 (cheap) and the k nearest chosen among them in
    float64, so which prompts are nearest does not hang on float32 rounding.
    """

    bank: Array  # (n, dim) L2-normalised embeddings, float16 values held as float64
    value: Array  # (n,) their demand targets
    k: int
    _bank32: npt.NDArray[np.float32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bank32", self.bank.astype(np.float32))

    def column(self, embeddings: npt.NDArray[np.float32]) -> Array:
        """Mean value of each row's k most cosine-similar bank prompts (0 with an empty bank)."""
        if len(self.value) == 0 or len(embeddings) == 0:
            return np.zeros(len(embeddings))
        k = min(self.k, len(self.value))
        n_cand = min(_CANDIDATES * k, len(self.value))
        rows32 = np.asarray(embeddings, dtype=np.float32)
        if len(rows32) == 1:
            # One prompt (the gateway at low load): a matrix-vector product, a quarter cheaper
            # than the (1, dim) @ (dim, n) matrix product, with the same values.
            return np.array([self._nearest_mean(rows32[0], self._bank32 @ rows32[0], k, n_cand)])
        out = np.empty(len(rows32))
        # A few rows at a time: the (rows, bank) similarity and index arrays stay near a
        # megabyte (bounded memory for classify's batches); one matrix product per group.
        for start in range(0, len(rows32), _NEIGHBOUR_ROWS):
            rows = rows32[start : start + _NEIGHBOUR_ROWS]
            rough = rows @ self._bank32.T
            cand = np.argpartition(-rough, n_cand - 1, axis=1)[:, :n_cand]
            exact = np.einsum("rd,rcd->rc", rows.astype(np.float64), self.bank[cand])
            best = np.argpartition(-exact, k - 1, axis=1)[:, :k]
            # Sorted indices: the mean sums in one order whatever order argpartition returned.
            top = np.sort(np.take_along_axis(cand, best, axis=1), axis=1)
            out[start : start + len(rows)] = self.value[top].sum(axis=1) / k
        return out

    def _nearest_mean(
        self, row: npt.NDArray[np.float32], rough: npt.NDArray[np.float32], k: int, n_cand: int
    ) -> float:
        """column() for one row: the same selection, without the batch's index bookkeeping."""
        cand = np.argpartition(-rough, n_cand - 1)[:n_cand]
        exact = self.bank[cand] @ row.astype(np.float64)
        top = np.sort(cand[np.argpartition(-exact, k - 1)[:k]])
        return float(self.value[top].sum() / k)


@dataclass(frozen=True)
class _OneRow:
    """Heads.estimate_one's constants: every head's weights stacked as the rows of one
    matrix (the categories', the budget's, each category's demand row, the tuned residual's),
    and the per-category scalars as Python floats."""

    weights: Array
    n_cat: int
    residual_at: int | None
    late_column: bool  # the neighbour column is searched only where the demand row reads it
    category_intercept: list[float]
    demand_intercept: list[float]
    demand_on_column: list[float]
    platt: tuple[float, float]
    category_offset: list[float]
    residual: list[float] | None  # its weight on the neighbour column, slope, intercept
    budget_offsets: list[list[float]]
    budget_intercept: float
    column_mean: float
    column_scale: float


_NEIGHBOUR_ROWS = 16
# The k nearest are chosen in float64 among the CANDIDATES * k nearest in float32.
_CANDIDATES = 2


@dataclass(frozen=True)
class Heads:
    """Linear heads over standardised [embedding, features, neighbour column if any]."""

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
    neighbours: Neighbours | None = None  # adds the last design column (format 3)
    # Each feature's range over the training prompts: a prompt outside it is read at its edge,
    # so a linear head never extrapolates past what it was fitted on (a 300 KB JSON prompt
    # got a p90 budget of 23,000 tokens). None in artifacts from before 2026-12-02, evening.
    feature_range: Array | None = None  # (2, n_features): low, high
    # Which of router.features' sets the heads read (absent from files before 2026-12-03: 1).
    feature_set: int = 1
    # A tuned artifact's residual on the demand logit (`rightsize tune --pairs`): weights over
    # the design's columns (0 on the neighbour column), a slope on the base logit, an
    # intercept. tuned logit = (1 + slope) * base logit + weights . x + intercept. None: untuned.
    demand_residual: Array | None = None  # (d + 2,)

    def design(
        self,
        embeddings: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
        *,
        neighbours: bool = True,
    ) -> Array:
        """Concatenate embeddings, features (and the neighbour column); standardise each.

        neighbours=False leaves the neighbour column at 0 (its training mean), for
        fill_neighbour_column() to set where it is read.
        """
        parts = [embeddings.astype(np.float64), self._read(features)]
        if self.neighbours is not None:
            column = self.neighbours.column(embeddings) if neighbours else self.input_mean[-1:]
            parts.append(np.broadcast_to(column, len(embeddings))[:, None])
        return (np.hstack(parts) - self.input_mean) / self.input_scale

    def _read(self, features: npt.NDArray[np.float32]) -> Array:
        """The features as the heads read them: float64, each at most at its training edge."""
        read = features.astype(np.float64)
        if self.feature_range is not None:
            # np.clip's values, without its Python wrapper (a few µs on the one-row path).
            read = np.minimum(np.maximum(read, self.feature_range[0]), self.feature_range[1])
        return read

    def fill_neighbour_column(
        self, x: Array, embeddings: npt.NDArray[np.float32], rows: npt.NDArray[np.bool_]
    ) -> None:
        """Set the standardised neighbour column of `rows` in x, as design() computes it."""
        if self.neighbours is None or not rows.any():
            return
        column = self.neighbours.column(embeddings[rows])
        x[rows, -1] = (column - self.input_mean[-1]) / self.input_scale[-1]

    @cached_property
    def _column_read_by_demand_only(self) -> bool:
        """True when only the demand head weighs the neighbour column (the shipped heads);
        worked out once (the heads are frozen): 3 µs a prompt on the gateway's path."""
        return not (np.any(self.category_coef[:, -1] != 0.0) or self.budget_coef[-1] != 0.0)

    def base_demand_logit(self, x: Array, category: npt.NDArray[np.int64]) -> Array:
        """The demand logit of the trained heads, before any tuned residual."""
        raw = np.einsum("nd,nd->n", x, self.demand_coef[category]) + self.demand_intercept[category]
        return np.asarray(
            self.demand_platt[0] * raw
            + self.demand_platt[1]
            + self.demand_category_offset[category],
            dtype=np.float64,
        )

    def demand_logit(self, x: Array, category: npt.NDArray[np.int64]) -> Array:
        """The demand logit, with the tuned residual if the heads have one."""
        logit = self.base_demand_logit(x, category)
        r = self.demand_residual
        if r is None:
            return logit
        return np.asarray((1.0 + r[-2]) * logit + x @ r[:-2] + r[-1], dtype=np.float64)

    def demand(self, x: Array, category: npt.NDArray[np.int64]) -> Array:
        """Calibrated probability that the small model fails where the strong one succeeds."""
        logit = self.demand_logit(x, category)
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
        """Run all heads and package one Estimate per row (one row: estimate_one's path)."""
        if len(embeddings) == 1:
            return [self.estimate_one(embeddings[0], features[0])]
        return self.estimates_batched(embeddings, features)

    @cached_property
    def _one_row(self) -> _OneRow:
        """estimate_one's constants, worked out once (the heads are frozen)."""
        rows = [self.category_coef, self.budget_coef[None, :], self.demand_coef]
        residual = self.demand_residual
        if residual is not None:
            rows.append(residual[None, :-2])
        n_cat = len(self.category_coef)
        return _OneRow(
            weights=np.ascontiguousarray(np.vstack(rows)),
            n_cat=n_cat,
            residual_at=2 * n_cat + 1 if residual is not None else None,
            late_column=self.neighbours is not None and self._column_read_by_demand_only,
            category_intercept=self.category_intercept.tolist(),
            demand_intercept=self.demand_intercept.tolist(),
            demand_on_column=self.demand_coef[:, -1].tolist(),
            platt=(float(self.demand_platt[0]), float(self.demand_platt[1])),
            category_offset=self.demand_category_offset.tolist(),
            residual=None if residual is None else residual[-3:].tolist(),
            budget_offsets=self.budget_offsets.tolist(),
            budget_intercept=float(self.budget_intercept),
            column_mean=float(self.input_mean[-1]),
            column_scale=float(self.input_scale[-1]),
        )

    def estimate_one(
        self, embedding: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> Estimate:
        """estimates() for one prompt: the same arithmetic as estimates_batched, its dot
        products in one matrix-vector product and its scalars in Python (a quarter of the time
        on a short prompt: the batch's array calls cost more than their arithmetic). Sums
        may run in another order: the demand can differ in its last bits (tests hold it to
        1e-9 of the batch's)."""
        one = self._one_row
        neighbours = self.neighbours
        parts = [embedding.astype(np.float64), self._read(features)]
        if neighbours is not None:
            if one.late_column:
                parts.append(self.input_mean[-1:])  # standardised to 0 until it is read
            else:
                parts.append(neighbours.column(embedding[None, :]))
        x = (np.concatenate(parts) - self.input_mean) / self.input_scale
        scores = (one.weights @ x).tolist()
        n_cat = one.n_cat
        by_category = [s + b for s, b in zip(scores[:n_cat], one.category_intercept, strict=True)]
        cat = by_category.index(max(by_category))  # argmax: the first of equal ones
        raw = scores[n_cat + 1 + cat]
        column = 0.0
        if one.late_column and neighbours is not None and one.demand_on_column[cat] != 0.0:
            column = (
                float(neighbours.column(embedding[None, :])[0]) - one.column_mean
            ) / one.column_scale
            raw += one.demand_on_column[cat] * column
        raw += one.demand_intercept[cat]
        logit = one.platt[0] * raw + one.platt[1] + one.category_offset[cat]
        if one.residual is not None and one.residual_at is not None:
            on_column, slope, intercept = one.residual
            # Its weight on a late column was left out of the product, where the column was 0.
            tuned = scores[one.residual_at] + on_column * column
            logit = (1.0 + slope) * logit + tuned + intercept
        demand = 1.0 / (1.0 + math.exp(-min(max(logit, -30.0), 30.0)))
        mean_log = scores[n_cat] + one.budget_intercept
        p50 = math.exp(mean_log + one.budget_offsets[cat][0])
        p90 = math.exp(mean_log + one.budget_offsets[cat][1])
        return Estimate(
            reasoning_demand=demand,
            token_budget_p50=max(1, round(p50)),
            token_budget_p90=max(1, round(max(p50, p90))),
            category=CATEGORIES[cat],
        )

    def estimates_batched(
        self, embeddings: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> list[Estimate]:
        """Run all heads over every row at once and package one Estimate per row.

        The neighbour search is the dearest step, and in the shipped heads only a knowledge
        prompt's demand reads its column: it runs for the rows whose category's demand row
        weighs it, once the category is known. A head whose weight on the column is exactly 0
        gives the same bits whatever the column holds, so the estimates are those of design().
        """
        if self.neighbours is not None and self._column_read_by_demand_only:
            x = self.design(embeddings, features, neighbours=False)
            cats = self.category(x)
            self.fill_neighbour_column(x, embeddings, self.demand_coef[cats, -1] != 0.0)
        else:
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
        """Plain lists of floats; repr-exact, so a JSON round trip is lossless.

        The neighbour bank is not in it (save() writes it as .npy); its values and k are.
        """
        data: dict[str, Any] = {name: _plain(getattr(self, name)) for name in _FIELDS}
        if self.neighbours is not None:
            data["neighbour_k"] = self.neighbours.k
            data["neighbour_value"] = _plain(self.neighbours.value)
        if self.feature_range is not None:
            data["feature_range"] = _plain(self.feature_range)
        data["feature_set"] = self.feature_set
        if self.demand_residual is not None:
            data["demand_residual"] = _plain(self.demand_residual)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], bank: npt.NDArray[np.floating] | None = None) -> Heads:
        """Rebuild heads from to_json() output (and the neighbour bank, if the heads have one)."""
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
        if "neighbour_k" in data:
            if bank is None:
                raise ValueError("these heads read a neighbour bank, and none was given")
            values["neighbours"] = Neighbours(
                bank=bank.astype(np.float64),
                value=np.asarray(data["neighbour_value"], dtype=np.float64),
                k=int(data["neighbour_k"]),
            )
        if "feature_range" in data:
            values["feature_range"] = np.asarray(data["feature_range"], dtype=np.float64)
        values["feature_set"] = int(data.get("feature_set", 1))
        if "demand_residual" in data:
            values["demand_residual"] = np.asarray(data["demand_residual"], dtype=np.float64)
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the heads as JSON and the neighbour bank as float16 .npy (no pickles)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, separators=(",", ":"))
            handle.write("\n")
        if self.neighbours is not None:
            np.save(neighbour_bank_path(path), self.neighbours.bank.astype(np.float16))

    @classmethod
    def load(cls, path: Path) -> Heads:
        """Read heads written by save()."""
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        bank = None
        if "neighbour_k" in data:
            bank = np.load(neighbour_bank_path(path), allow_pickle=False)
        return cls.from_json(data, bank)


def neighbour_bank_path(heads_path: Path) -> Path:
    """Where save() puts the neighbour bank of a heads file: heads_x.json -> heads_x_bank.npy."""
    return heads_path.with_name(heads_path.stem + "_bank.npy")


_FIELDS: tuple[str, ...] = tuple(
    n
    for n in Heads.__dataclass_fields__
    if n not in ("neighbours", "feature_range", "feature_set", "demand_residual")
)


def _plain(value: Array | float) -> list[Any] | float:
    return value.tolist() if isinstance(value, np.ndarray) else float(value)
