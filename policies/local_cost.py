"""What a local token costs: GPU-hours amortised over measured throughput.

A local deployment's GPUs are paid for by the hour. Their cost per token is the GPU-second
price over the tokens served per busy GPU-second, measured over a trailing window: busy time is
the union of the requests' upstream intervals (concurrent requests on a batching engine share
it), times the deployment's GPU count. Prompt and completion tokens count alike.
"""

from __future__ import annotations

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
    """The requests one local deployment served in the trailing window, kept in memory."""

    def __init__(self, cost: GpuCost) -> None:
        self.cost = cost
        self._served: deque[tuple[float, float, int]] = deque()

    def observe(self, start: float, end: float, tokens: int) -> None:
        self._served.append((start, max(start, end), tokens))

    def measured(self, now: float) -> Throughput:
        while self._served and self._served[0][1] < now - self.cost.window_s:
            self._served.popleft()
        return throughput(self._served, self.cost.gpus)

    def usd_per_token(self, now: float) -> Decimal:
        """The measured price once the window holds enough busy time, else the expected one."""
        measured = self.measured(now)
        rate = measured.tokens_per_gpu_s
        if rate is None or measured.busy_s < Decimal(str(self.cost.min_measured_s)):
            return self.cost.expected_usd_per_token
        return self.cost.usd_per_token(rate)


def _seconds(value: float) -> Decimal:
    return Decimal(str(value)).quantize(_MICRO)
