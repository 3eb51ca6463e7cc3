"""What a local token costs: GPU-hours amortised over measured throughput.

A local deployment's GPUs are paid for by the hour. Their cost per token is the GPU-second
price over the tokens served per busy GPU-second, measured over a trailing window: busy time is
the union of the requests' upstream intervals (concurrent requests on a batching engine share
it), times the deployment's GPU count. Prompt and completion tokens count alike.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Pricing = Literal["price", "model_database", "gpu_hour", "unpriced"]
"""How a deployment's cost is derived: its `price`, litellm's model database, the GPU-hour,
or nothing (`unpriced`: a local model with no price at all, reported as such, never as $0)."""

_HOUR = Decimal(3600)
# Measured times are floats (clock readings); a microsecond is far below what they resolve.
_MICRO = Decimal("0.000001")


class GpuCost(BaseModel):
    """A local deployment priced by the GPU-hour (exact decimals; write them as strings)."""

    model_config = ConfigDict(extra="forbid")

    usd_per_gpu_hour: Decimal = Field(gt=0)
    gpus: int = Field(default=1, ge=1)
    expected_tokens_per_s: Decimal = Field(
        gt=0,
        description="Tokens per second the deployment (all its GPUs) serves at typical load: "
        "prices requests until the window holds min_measured_s of busy time, and ranks the "
        "model in cost selection.",
    )
    window_s: float = Field(default=900.0, gt=0, description="Trailing throughput window.")
    min_measured_s: float = Field(
        default=30.0, ge=0, description="Busy seconds the window needs before it prices."
    )

    @field_validator("usd_per_gpu_hour", "expected_tokens_per_s", mode="before")
    @classmethod
    def _no_binary_floats(cls, value: object) -> object:
        return str(value) if isinstance(value, float) else value

    @property
    def usd_per_gpu_second(self) -> Decimal:
        return self.usd_per_gpu_hour / _HOUR

    def usd_per_token(self, tokens_per_gpu_s: Decimal) -> Decimal:
        """One price for every token: a GPU-second's price over the tokens it serves."""
        return self.usd_per_gpu_second / tokens_per_gpu_s

    @property
    def expected_usd_per_token(self) -> Decimal:
        return self.usd_per_token(self.expected_tokens_per_s / self.gpus)


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> Decimal:
    """Length of the union of [start, end) intervals, in seconds (overlaps counted once)."""
    total = Decimal(0)
    current: tuple[float, float] | None = None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += _seconds(current[1] - current[0])
            current = (start, end)
        elif end > current[1]:
            current = (current[0], end)
    if current is not None:
        total += _seconds(current[1] - current[0])
    return total


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tokens served over busy GPU-seconds."""

    tokens: int
    busy_s: Decimal
    gpus: int

    @property
    def gpu_seconds(self) -> Decimal:
        return self.busy_s * self.gpus

    @property
    def tokens_per_gpu_s(self) -> Decimal | None:
        return self.tokens / self.gpu_seconds if self.gpu_seconds else None


def throughput(served: Iterable[tuple[float, float, int]], gpus: int) -> Throughput:
    """The throughput of (start, end, tokens) requests on `gpus` GPUs."""
    rows = list(served)
    busy = busy_seconds((start, end) for start, end, _ in rows)
    return Throughput(sum(tokens for _, _, tokens in rows), busy, gpus)


class ThroughputWindow:
    """The requests one local deployment served in the trailing window, kept in memory.

    Busy time is kept merged as it arrives (sorted disjoint intervals), so that pricing a
    request costs a bisection, not a pass over the window.
    """

    def __init__(self, cost: GpuCost) -> None:
        self.cost = cost
        self._tokens: deque[tuple[float, int]] = deque()  # (end, tokens), in arrival order
        self._token_sum = 0
        self._busy = BusyTime()

    def observe(self, start: float, end: float, tokens: int) -> None:
        end = max(start, end)
        self._tokens.append((end, tokens))
        self._token_sum += tokens
        self._busy.add(start, end)

    def measured(self, now: float) -> Throughput:
        cutoff = now - self.cost.window_s
        while self._tokens and self._tokens[0][0] < cutoff:
            self._token_sum -= self._tokens.popleft()[1]
        self._busy.expire(cutoff)
        return Throughput(self._token_sum, _seconds(self._busy.total), self.cost.gpus)

    def usd_per_token(self, now: float) -> Decimal:
        """The measured price once the window holds enough busy time, else the expected one."""
        measured = self.measured(now)
        rate = measured.tokens_per_gpu_s
        if rate is None or measured.busy_s < Decimal(str(self.cost.min_measured_s)):
            return self.cost.expected_usd_per_token
        return self.cost.usd_per_token(rate)


class BusyTime:
    """A union of intervals kept as sorted disjoint [start, end) pairs, with its length."""

    def __init__(self) -> None:
        self._starts: list[float] = []
        self._ends: list[float] = []
        self.total = 0.0

    def add(self, start: float, end: float) -> None:
        # Intervals i..j-1 touch [start, end]: they and it become one.
        i = bisect_left(self._ends, start)
        j = bisect_right(self._starts, end)
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
            self.total -= sum(
                e - s for s, e in zip(self._starts[i:j], self._ends[i:j], strict=True)
            )
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]
        self.total += end - start

    def expire(self, cutoff: float) -> None:
        """Drop the intervals that ended before `cutoff`."""
        n = bisect_left(self._ends, cutoff)
        if n:
            self.total -= sum(e - s for s, e in zip(self._starts[:n], self._ends[:n], strict=True))
            del self._starts[:n], self._ends[:n]
            if not self._starts:
                self.total = 0.0  # no float residue once empty


def _seconds(value: float) -> Decimal:
    return Decimal(str(value)).quantize(_MICRO)
