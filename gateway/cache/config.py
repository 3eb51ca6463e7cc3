"""The `cache` section of the configuration file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Measured by benchmarks/cache_semantic.py on the 4,228 distinct routing dev prompts with the
# router's embedding (the vector the gateway indexes) and the lexical guard (guard.py): the
# lowest threshold with no false hit at all, BBH included, among each prompt's nearest distinct
# prompt. Without the guard it had to be 0.99999: the averaged embedding cannot see numbers or
# word order (docs/cache.md, docs/benchmarks.md).
DEFAULT_SEMANTIC_THRESHOLD = 0.999
# Retired with the bigram-share guard (issue 17): the guard now refuses every differing span
# that is not an allowed difference. Still accepted so that existing files validate.
DEFAULT_MIN_WORD_ORDER_OVERLAP = 0.9


class TeamCacheSettings(BaseModel):
    """Per-team overrides; a team without an entry gets the section's defaults."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    sampled: bool | None = Field(
        default=None,
        description="Also cache requests that are not deterministic (temperature > 0 or unset).",
    )
    semantic: bool = Field(default=False, description="Opt in to the semantic tier.")
    semantic_threshold: float | None = Field(default=None, gt=0, le=1)


class SemanticSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=DEFAULT_SEMANTIC_THRESHOLD, gt=0, le=1)
    min_word_order_overlap: float = Field(
        default=DEFAULT_MIN_WORD_ORDER_OVERLAP,
        ge=0,
        le=1,
        description="Retired and ignored: the guard refuses every differing span that is not an "
        "allowed difference (docs/cache.md), whatever share of the prompt it is.",
    )
    max_entries_per_team: int = Field(default=4096, gt=0)
    dimensions: int = Field(default=384, gt=0)


class CacheSettings(BaseModel):
    """Prompt cache: exact (team-scoped) and an opt-in semantic tier."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: Literal["auto", "memory", "redis"] = Field(
        default="auto", description="auto: Redis when store.redis_url is set, else in process."
    )
    ttl_s: float = Field(default=3600.0, gt=0)
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="In-process store bound; with Redis, the bound of the near copies.",
    )
    max_entry_bytes: int = Field(default=1024 * 1024, gt=0)
    sampled: bool = Field(
        default=False, description="Cache non-deterministic requests too (every team)."
    )
    key_prefix: str = Field(default="rightsize:cache:", min_length=1)
    # A bypass costs an upstream call (hundreds of ms, and money) and the CPU to make it, which
    # slows the next lookups in turn; a deadline only bounds what a hung Redis costs the calls
    # in flight, once per retry window. 5 ms cut 30% of the hits at 200 req/s on a loaded
    # 2-core host and the run collapsed into queueing; 50 ms cut 1 in 2,000 (docs/cache.md).
    redis_timeout_ms: float = Field(
        default=50.0, gt=0, description="A Redis call slower than this is bypassed."
    )
    redis_retry_after_s: float = Field(
        default=1.0, ge=0, description="After a Redis failure, skip it this long before retrying."
    )
    # An exact hit read from Redis is a loopback round trip at best (72 µs on the 2-core
    # host, 0.1 ms of the worker's CPU through the gateway): a hot entry served from the
    # process's memory costs what an in-process hit does (docs/benchmarks.md, "Near copies").
    redis_near_ttl_s: float = Field(
        default=1.0,
        ge=0,
        description="Keep entries read from or written to Redis in process memory this long "
        "(bounded by max_bytes); a delete or invalidation made by another replica or worker "
        "reaches this one within it. 0: every lookup reads Redis.",
    )
    semantic: SemanticSettings = Field(default_factory=SemanticSettings)
    teams: dict[str, TeamCacheSettings] = Field(default_factory=dict)

    def team(self, name: str) -> TeamCacheSettings:
        return self.teams.get(name) or _DEFAULT_TEAM


_DEFAULT_TEAM = TeamCacheSettings()
