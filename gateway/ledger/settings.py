"""The `ledger` section of the configuration file."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
