"""Figures of benchmarks/gateway_bench.py: percentiles per cell, the markdown table, the plot."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import LoadResult


@dataclass(frozen=True)
class Load:
    """A load level: closed loop at a concurrency, or open loop at a paced rate."""

    name: str
    mode: str  # "closed" or "open"
    concurrency: int = 1
    rate: float = 0.0


NONE = "\N{EN DASH}"  # a table cell with no figure, as in docs/benchmarks.md

LOADS = [
    Load("c=1", "closed", concurrency=1),
    Load("c=32", "closed", concurrency=32),
    Load("25/s", "open", rate=25),
    Load("100/s", "open", rate=100),
    Load("200/s", "open", rate=200),
]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))  # the smallest value with q of them at or below
    return ordered[rank - 1]


@dataclass
class Cell:
    """One configuration at one load, its rounds pooled."""

    latencies_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    send_lag_ms: list[float] = field(default_factory=list)
    bypasses: int | None = None  # Redis cache calls given up on (gateway's /admin/cache)

    def add(self, result: LoadResult, bypasses: int | None) -> None:
        self.latencies_ms += result.latencies_ms
        self.window_s += result.window_s
        self.errors += result.errors
        self.cache += result.cache
        self.send_lag_ms += result.send_lag_ms
        if bypasses is not None:
            self.bypasses = (self.bypasses or 0) + bypasses

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.window_s if self.window_s else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def _ms(value: float) -> str:
    if math.isnan(value):
        return NONE
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "0"


def results_table(
    cells: dict[tuple[str, str], Cell], configs: list[str], floor: str, loads: list[Load]
) -> str:
    """One row per configuration and load; "added" is this cell's percentile minus the floor's
    at the same load (same percentile), in milliseconds."""
    rows = [
        "| config | load | req/s | p50 | p90 | p99 | added p50 | added p99 | errors "
        "| x-rightsize-cache | Redis bypasses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load in loads:
        base = cells.get((floor, load.name))
        for config in configs:
            cell = cells.get((config, load.name))
            if cell is None:
                continue
            added50 = cell.p(0.5) - base.p(0.5) if base and config != floor else math.nan
            added99 = cell.p(0.99) - base.p(0.99) if base and config != floor else math.nan
            bypasses = NONE if cell.bypasses is None else str(cell.bypasses)
            rows.append(
                f"| {config} | {load.name} | {cell.throughput:.0f} | {_ms(cell.p(0.5))} "
                f"| {_ms(cell.p(0.9))} | {_ms(cell.p(0.99))} | {_ms(added50)} | {_ms(added99)} "
                f"| {_counts(cell.errors)} | {_counts(cell.cache) if cell.cache else NONE} "
                f"| {bypasses} |"
            )
    return "\n".join(rows)


def plot_added_latency(
    cells: dict[tuple[str, str], Cell],
    configs: list[str],
    floor: str,
    loads: list[Load],
    path: Path,
) -> None:
    """Added latency p50 and p99 against the paced rate, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    paced = [load for load in loads if load.mode == "open"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    for axis, q, title in ((axes[0], 0.5, "p50"), (axes[1], 0.99, "p99")):
        for config in configs:
            if config == floor:
                continue
            points = [
                (load.rate, cells[config, load.name].p(q) - cells[floor, load.name].p(q))
                for load in paced
                if (config, load.name) in cells and (floor, load.name) in cells
            ]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=config)
        axis.set_title(f"added latency {title} vs the floor")
        axis.set_xlabel("paced rate (requests/s, open loop)")
        axis.set_ylabel("ms (symmetric log scale)")
        axis.set_yscale("symlog", linthresh=1.0)
        axis.set_xticks([load.rate for load in paced])
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
