"""The `local_backend` configuration section: probes, circuit breaker, spill-over, picking."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SpillSettings(BaseModel):
    """When new requests leave a local deployment for the next tier, and when they return.

    Two thresholds (hysteresis): a load that hovers around one value does not flip routing.
    """

    model_config = ConfigDict(extra="forbid")

    queue_high: float = Field(
        default=8, ge=0, description="Spill when the least-loaded replica has this many waiting."
    )
    queue_low: float = Field(
        default=2, ge=0, description="Return when the least-loaded replica is at or below this."
    )
    kv_high: float = Field(default=0.95, ge=0, le=1, description="Spill at this KV-cache use.")
    kv_low: float = Field(default=0.85, ge=0, le=1, description="Return at or below this.")

    @model_validator(mode="after")
    def _low_below_high(self) -> SpillSettings:
        if self.queue_low >= self.queue_high:
            raise ValueError("queue_low must be below queue_high (hysteresis)")
        if self.kv_low >= self.kv_high:
            raise ValueError("kv_low must be below kv_high (hysteresis)")
        return self


class AffinitySettings(BaseModel):
    """Prefix affinity: a request sharing a long prefix goes where that prefix was served."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    block_chars: int = Field(default=256, gt=0, description="Prefix hashed in blocks this long.")
    max_blocks: int = Field(default=64, gt=0, description="Blocks hashed per request at most.")
    min_blocks: int = Field(
        default=2, gt=0, description="A shared prefix shorter than this many blocks is ignored."
    )
    load_slack: float = Field(
        default=4,
        ge=0,
        description="The prefix's replica is kept while its load is at most the least-loaded "
        "replica's plus this many requests.",
    )
    max_entries: int = Field(default=100_000, gt=0, description="Prefix blocks remembered.")


class LocalBackendSettings(BaseModel):
    """Models with an `engine` are probed here and their replicas picked by load and prefix."""

    model_config = ConfigDict(extra="forbid")

    probe_interval_s: float = Field(default=2.0, gt=0, description="Seconds between probes.")
    probe_timeout_s: float = Field(default=1.0, gt=0, description="Each probe's time limit.")
    max_concurrent_probes: int = Field(default=16, gt=0, description="Probes in flight at most.")
    unhealthy_after: int = Field(
        default=2, gt=0, description="Consecutive failed health probes that take a replica out."
    )
    stale_after_s: float = Field(
        default=10.0,
        gt=0,
        description="A load reading older than this is unknown (never taken as idle).",
    )
    breaker_failures: int = Field(
        default=3, gt=0, description="Consecutive upstream errors that open a replica's breaker."
    )
    breaker_open_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds an open breaker keeps the replica out before a probe may close it.",
    )
    spill: SpillSettings = Field(default_factory=SpillSettings)
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)
    priority_hint: bool = Field(
        default=False,
        description="Send vLLM's per-request `priority` from the predicted answer length "
        "(short answers first); only for engines started with --scheduling-policy priority.",
    )
    priority_bucket_tokens: int = Field(
        default=128, gt=0, description="Predicted p50 tokens per priority step."
    )
