"""Typed rows: what the store hands out and takes in."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, Integer, String

from gateway.ids import unique_hex
from gateway.store.tables import spend_log
from ledger.money import PICO as PICO
from ledger.money import from_picousd as from_picousd
from ledger.money import to_picousd as to_picousd


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    created_at: datetime
    latency_class: str | None = None  # the team's default latency class; None: the policy's


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
    latency_class: str | None = None  # the key's default latency class; None: the team's
    team_latency_class: str | None = None  # its team's, read with the key

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
    # The gateway's own id of the row, unique in the store: a replay writes it at most once.
    record_id: str = field(default_factory=unique_hex)
    # The router's estimate of the prompt, for scoring the router on logged traffic; None on
    # cache hits and on requests refused before the router ran.
    reasoning_demand: float | None = None
    token_budget_p50: int | None = None
    token_budget_p90: int | None = None
    category: str | None = None
    router_artifact: str | None = None  # Router.artifact_id of the artifact that estimated
    config_hash: str | None = None  # gateway.fingerprint: the routing configuration in force
    api: str = "openai"  # the API the request came in on: openai or anthropic
    # Of prompt_tokens, those written to an Anthropic prompt cache (priced apart).
    cache_creation_tokens: int = 0
    # interactive, batch or background (gateway/latency.py); None on rows before revision 0010.
    latency_class: str | None = "interactive"


@dataclass(slots=True)
class OutcomeRecord:
    """One shadow-judged request (table router_outcomes, revision 0009): both tiers' answers to
    the same prompt and the judge's preference between them."""

    request_id: str
    created_at: datetime
    prompt_hash: str  # sha256 hex of the prompt text the router read
    served: str  # "light" or "strong": the tier whose answer the client got
    light_tier: str
    strong_tier: str
    team: str | None = None
    prompt_text: str | None = None  # only when the team allows it
    reasoning_demand: float | None = None
    category: str | None = None
    router_artifact: str | None = None
    light_deployment: str | None = None
    strong_deployment: str | None = None
    light_completion_tokens: int | None = None
    strong_completion_tokens: int | None = None
    verdict: str | None = None  # "light", "strong", "tie"; None: no verdict (see error)
    judge_deployment: str | None = None
    shadow_cost_usd: Decimal = field(default_factory=Decimal)
    judge_cost_usd: Decimal = field(default_factory=Decimal)
    error: str | None = None
    outcome_id: str = field(default_factory=unique_hex)


# PostgreSQL text refuses NUL; asyncpg cannot encode lone surrogates (no UTF-8 form).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_MONEY_COLUMNS = {"cost_usd": "cost_picousd", "saved_usd": "saved_picousd"}


def fit_spend_record(record: SpendRecord) -> list[str]:
    """Fit the record to the spend_log columns in place; say what had to change.

    A row the database refuses would fail its whole batch, other teams' rows with it, and a
    tenant controls some of the text (the requested model), so nothing unfitted is queued.
    """
    changes: list[str] = []
    for name, fit in _FITS:
        value = getattr(record, name)
        fitted = fit(value)
        if fitted is not value:
            setattr(record, name, fitted)
            changes.append(name)
    return changes


def _text(length: int | None, nullable: bool) -> Callable[[Any], Any]:
    def fit(value: Any) -> Any:
        if value is None:
            return None if nullable else ""
        text = value if isinstance(value, str) else str(value)
        if _UNSTORABLE.search(text) is not None:
            text = _UNSTORABLE.sub("", text)
        if length is not None and len(text) > length:
            text = text[:length]
        return value if text == value else text

    return fit


def _integer(bits: int, nullable: bool) -> Callable[[Any], Any]:
    low, high = -(2**bits), 2**bits - 1

    def fit(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return None if nullable else 0
        return value if low <= value <= high else max(low, min(high, value))

    return fit


def _money(value: Any) -> Any:
    # Stored as pico-dollars in a 64-bit integer.
    if not isinstance(value, Decimal) or not value.is_finite():
        return Decimal(0)
    pico = to_picousd(value)
    return value if -(2**63) <= pico < 2**63 else from_picousd(max(-(2**63), min(2**63 - 1, pico)))


def _real(nullable: bool) -> Callable[[Any], Any]:
    def fit(value: Any) -> Any:
        if isinstance(value, float | int) and not isinstance(value, bool):
            return value if math.isfinite(value) else (None if nullable else 0.0)
        return None if nullable else 0.0

    return fit


def _boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else bool(value)


def _plan() -> list[tuple[str, Callable[[Any], Any]]]:
    """One fitting function per record field, from the spend_log table's own column types."""
    plan: list[tuple[str, Callable[[Any], Any]]] = []
    for name in SpendRecord.__slots__:
        column = spend_log.c.get(_MONEY_COLUMNS.get(name, name))
        if column is None or name == "created_at":
            continue
        kind, nullable = column.type, bool(column.nullable)
        if name in _MONEY_COLUMNS:
            plan.append((name, _money))
        elif isinstance(kind, String):
            plan.append((name, _text(kind.length, nullable)))
        elif isinstance(kind, Boolean):
            plan.append((name, _boolean))
        elif isinstance(kind, Integer):
            plan.append((name, _integer(63 if isinstance(kind, BigInteger) else 31, nullable)))
        elif isinstance(kind, Float):
            plan.append((name, _real(nullable)))
    return plan


_FITS = _plan()
