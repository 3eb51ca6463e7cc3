"""The `ledger` section of the configuration file."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class LedgerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        default="UTC", description="IANA zone in which daily, weekly and monthly periods start."
    )
    reservation_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="A hold not settled within this time frees itself (a crashed worker's hold).",
    )
    default_max_output_tokens: int = Field(
        default=4096,
        gt=0,
        description="Output-token bound of a reservation when the request sets no max_tokens "
        "and the deployment has no known context window.",
    )
    budget_cache_s: float = Field(
        default=2.0, ge=0, description="How long a process reuses the budgets it read."
    )
    redis_prefix: str = Field(default="rightsize:ledger:", min_length=1)
    alert_webhook_url: str | None = Field(
        default=None, description="POSTed a JSON event when spend crosses an alert threshold."
    )
    savings_reference_model: str | None = Field(
        default=None,
        description="Configured model the savings report prices every request at (counterfactual).",
    )

    on_outage: Literal["fail_closed", "fail_open"] = Field(
        default="fail_closed",
        description="When the counters (Redis, or the database without Redis) cannot be "
        "reached: fail_closed refuses budgeted requests with 503; fail_open admits them up to "
        "the outage allowance per process and team, then refuses.",
    )
    outage_allowance_usd: Decimal | None = Field(
        default=None,
        ge=0,
        decimal_places=12,
        description="fail_open: predicted cost (USD) each process may admit per team while "
        "the counters are unreachable.",
    )
    outage_allowance_requests: int | None = Field(
        default=None,
        ge=0,
        description="fail_open: requests each process may admit per team while the counters "
        "are unreachable.",
    )
    redis_connect_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="How long the ledger waits to connect to Redis before it counts Redis as "
        "down (and answers 503).",
    )
    redis_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long one counter operation on Redis may take before it counts as an "
        "outage.",
    )
    heartbeat_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each process records that it is alive (its holds stay held).",
    )
    heartbeat_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A process silent this long is dead: any live process releases its holds "
        "(long before reservation_ttl_s).",
    )
    sweep_batch: int = Field(
        default=32, gt=0, description="At most this many dead processes are swept at a time."
    )

    @model_validator(mode="after")
    def _bounded(self) -> LedgerSettings:
        if self.on_outage == "fail_open" and (
            self.outage_allowance_usd is None and self.outage_allowance_requests is None
        ):
            raise ValueError(
                "on_outage: fail_open needs outage_allowance_usd and/or "
                "outage_allowance_requests (what a process may admit without its counters)"
            )
        if self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ValueError(
                "heartbeat_timeout_s must be at least twice heartbeat_s (one late heartbeat "
                "must not make a live process look dead)"
            )
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known IANA time zone") from None
        return value

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
