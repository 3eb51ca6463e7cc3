"""The seam between the ledger and where its counters live (Redis or the SQL store)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.ledger.budgets import Amounts


@dataclass(frozen=True, slots=True)
class Claim:
    """One counter a hold must fit in, with that budget's limits (None: unlimited)."""

    counter: str
    limit_picousd: int | None
    limit_tokens: int | None
    limit_requests: int | None
    expires_at_ms: int | None  # when the counter itself may be forgotten (after its window)


@dataclass(frozen=True, slots=True)
class CounterState:
    counter: str
    spent: Amounts
    reserved: Amounts


@dataclass(frozen=True, slots=True)
class Admitted:
    states: tuple[CounterState, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """The first claim the hold did not fit in, and that counter as it stood."""

    index: int
    state: CounterState


@dataclass(frozen=True, slots=True)
class NeedsRebuild:
    """These counters are unknown (new window, new budget, or Redis lost them)."""

    indexes: tuple[int, ...]


class CounterBackend(Protocol):
    """Atomic counters: every method is one transaction or one script."""

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild: ...

    async def settle(
        self, hold_id: str, claims: Sequence[Claim], actual: Amounts, reserved: Amounts
    ) -> tuple[CounterState, ...]:
        """Add the actual use to spent and drop the hold; returns the counters afterwards."""
        ...

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        """Set an unknown counter's spend (from the spend log); a known counter is left alone."""
        ...

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        """Counters as they stand, expired holds dropped; None for an unknown counter."""
        ...

    async def aclose(self) -> None: ...
