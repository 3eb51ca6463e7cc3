"""The seam between the ledger and where its counters live (Redis or the SQL store)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger.budgets import Amounts


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


def owner_of(hold_id: str) -> str:
    """The process a hold belongs to: hold ids are `owner.random`."""
    return hold_id.partition(".")[0]


class CounterBackend(Protocol):
    """Atomic counters: every method is one transaction or one script."""

    # True where a call's command reaches the store before any call made after it starts
    # (one Redis connection pool writing in call order; one writer thread): a settlement sent
    # there is applied before this process's next reserve or read (Ledger.settle_sent).
    applies_in_order: bool

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild: ...

    async def settle(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        actual: Amounts,
        reserved: Amounts,
        *,
        only_held: bool = False,
    ) -> tuple[CounterState, ...]:
        """Add the actual use to spent and drop the hold; returns the counters afterwards.

        only_held: charge only the counters that still hold the hold (a retried settlement: a
        counter rebuilt from the spend log meanwhile already counts the request's row).
        """
        ...

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        """Set an unknown counter's spend (from the spend log); a known counter is left alone."""
        ...

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        """Counters as they stand, expired holds dropped; None for an unknown counter."""
        ...

    async def heartbeat(self, owner: str, now_ms: int) -> None:
        """Record that the process owning holds `owner.*` is alive."""
        ...

    async def sweep(self, stale_before_ms: int, limit: int) -> int:
        """Release the holds of up to `limit` owners last seen before `stale_before_ms`;
        returns how many holds were released."""
        ...

    async def retire(self, owner: str) -> int:
        """At a clean shutdown: forget a process's heartbeat and release the holds it still
        has (requests cancelled past the shutdown timeout); returns how many were released."""
        ...

    async def ping(self) -> None:
        """One trivial round trip; raises when the counters cannot be reached."""
        ...

    async def aclose(self) -> None: ...

    async def forget(self, counter_prefix: str) -> int:
        """Drop every counter whose name starts with the prefix, and its holds (a deleted
        team's, `team:search:`); returns how many counters went."""
        ...
