"""Typed rows: what the store hands out and takes in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

PICO = Decimal(10) ** 12


def to_picousd(usd: Decimal) -> int:
    """USD to integer pico-dollars, rounding half-up below one pico-dollar."""
    return int((usd * PICO).to_integral_value(rounding="ROUND_HALF_UP"))


def from_picousd(pico: int) -> Decimal:
    return Decimal(pico) / PICO


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A virtual key as stored: never the secret, only its keyed hash."""

    id: str
    team: str
    name: str | None
    key_hint: str
    allowed_models: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None

    def may_use(self, *names: str | None) -> bool:
        """True when the key is unrestricted or any of the names is on its allow-list."""
        if self.allowed_models is None:
            return True
        return any(n in self.allowed_models for n in names if n)


@dataclass(slots=True)
class SpendRecord:
    """One request, success or failure, as the spend log keeps it."""

    request_id: str
    created_at: datetime
    status: int
    team: str | None = None
    key_id: str | None = None
    requested_model: str | None = None
    deployment: str | None = None
    tier: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: Decimal = field(default_factory=Decimal)
    upstream_ms: float | None = None
    overhead_ms: float | None = None
    stream: bool = False
    cache_hit: bool = False
    # What a cache hit would have cost upstream (cost_usd is 0): the savings report's input.
    saved_usd: Decimal = field(default_factory=Decimal)
    error_type: str | None = None
    route_reason: str | None = None
    attempts: int = 1
