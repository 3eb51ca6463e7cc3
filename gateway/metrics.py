"""Prometheus metrics: recorded once per request from its spend record, served at /metrics.

One process: the series live in a registry of this app's own. Several workers (`rightsize
serve --workers N`): prometheus-client's multiprocess mode, each worker writing its values to
files in PROMETHEUS_MULTIPROC_DIR (a directory the supervisor makes per run) and a scrape
answered by any worker summing every worker's files, so the counts are the replica's.

Labels are bounded: team, tier, deployment, configured replica URLs, status and reasons from
fixed sets; never a key,
a request id, a requested model name (client text) or prompt text (DESIGN.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from yarl import URL

from gateway.latency import GateReport
from gateway.store import SpendRecord
from local_backend import ReplicaReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR_PREFIX = "rightsize-metrics-"  # then the supervisor's pid (gateway.cli serve)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# The gateway's own time per request is milliseconds; a slow one is tens.
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_DEMAND_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The ledger's refusal codes (ledger/errors.py BudgetExceeded.code) and what each counts as.
_DENIALS = {"budget_exceeded": "budget", "rate_limit_exceeded": "rate"}


class MultiprocessTooLate(RuntimeError):
    """PROMETHEUS_MULTIPROC_DIR was set after prometheus-client was imported in this process."""


class Metrics:
    """The gateway's series. `observe` is the request path's one call; the rest are counted
    where they happen (cache bypasses, spend-log replays)."""

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        if multiproc_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            # The library picks its value store once, at import: values kept in memory here
            # would never reach the files the scrape sums.
            raise MultiprocessTooLate(
                f"{MULTIPROC_ENV} must be set before the process starts (prometheus-client "
                "chooses multiprocess mode when it is imported)"
            )
        # Multiprocess: the series are exported through the files, so they join no registry
        # (one they joined would export them twice beside the MultiProcessCollector's sums).
        self._registry = CollectorRegistry() if multiproc_dir is None else None
        # Each labelled child, found once: the library's `labels()` takes a lock and checks
        # its arguments on every call, 3 times the cost of the increment itself. Bounded as
        # the label sets are.
        self._children: dict[tuple[Any, ...], Any] = {}
        registry = self._registry
        self.requests = Counter(
            "rightsize_requests",
            "Requests answered, by team, tier, deployment and HTTP status.",
            ["team", "tier", "deployment", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "rightsize_tokens",
            "Tokens sent to and received from upstream deployments (cache hits excluded).",
            ["team", "deployment", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "rightsize_cost_usd",
            "Upstream cost charged, in US dollars.",
            ["team", "deployment"],
            registry=registry,
        )
        self.saved = Counter(
            "rightsize_cache_saved_usd",
            "What the requests the prompt cache answered would have cost upstream, in US dollars.",
            ["team"],
            registry=registry,
        )
        self.decisions = Counter(
            "rightsize_routing_decisions",
            "Routing decisions by the tier served and whether the client asked for `auto`.",
            ["tier", "requested"],
            registry=registry,
        )
        self.rules = Counter(
            "rightsize_routing_rules",
            "Routing decisions by the tier served and each policy rule that acted (pinned, "
            "tier, demand, default, team_tiers, sticky, soft_budget, spill, latency_class, "
            "latency_objective, next_tier, reasoning_effort): one decision counts once per rule.",
            ["tier", "rule"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "rightsize_upstream_fallbacks",
            "Upstream attempts that failed over to the next deployment, by the one that served.",
            ["deployment"],
            registry=registry,
        )
        self.demand = Histogram(
            "rightsize_router_reasoning_demand",
            "The router's reasoning demand of each routed prompt.",
            buckets=_DEMAND_BUCKETS,
            registry=registry,
        )
        self.cache = Counter(
            "rightsize_cache_lookups",
            "Prompt-cache lookups by team and result (hit, semantic_hit, miss).",
            ["team", "result"],
            registry=registry,
        )
        self.cache_bypasses = Counter(
            "rightsize_cache_bypasses",
            "Requests the prompt cache did not look up or store, by reason.",
            ["reason"],
            registry=registry,
        )
        self.shadow = Counter(
            "rightsize_shadow_jobs",
            "Shadow evaluation by team and result (sampled, dropped, capped, written, failed).",
            ["team", "result"],
            registry=registry,
        )
        self.holds = Counter(
            "rightsize_budget_holds",
            "Requests held against a budget or rate limit before the upstream call.",
            ["team"],
            registry=registry,
        )
        self.denials = Counter(
            "rightsize_budget_denials",
            "Requests refused with 429 by a budget or a rate limit.",
            ["team", "kind"],
            registry=registry,
        )
        self.upstream = Histogram(
            "rightsize_upstream_latency_seconds",
            "Upstream time per request, fallbacks included (streams: until the stream ends).",
            ["deployment"],
            buckets=_UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "rightsize_time_to_first_token_seconds",
            "Streams: from the request's arrival to the first chunk from upstream (fallbacks "
            "included), by the deployment that served it.",
            ["deployment"],
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        # Local engines as this process's probes last read them (set at each scrape; across
        # workers the most recent value wins: every worker probes the same engines).

        def engine_gauge(name: str, documentation: str, labels: list[str]) -> Gauge:
            return Gauge(
                name, documentation, labels, registry=registry, multiprocess_mode="mostrecent"
            )

        self.engine_waiting = engine_gauge(
            "rightsize_local_engine_requests_waiting",
            "Requests waiting in a local engine's queue (vLLM num_requests_waiting, SGLang "
            "num_queue_reqs), as last probed.",
            ["deployment", "replica"],
        )
        self.engine_running = engine_gauge(
            "rightsize_local_engine_requests_running",
            "Requests a local engine is running, as last probed.",
            ["deployment", "replica"],
        )
        self.engine_kv = engine_gauge(
            "rightsize_local_engine_kv_cache_usage_ratio",
            "A local engine's KV-cache use, 0..1 (vLLM kv_cache_usage_perc, SGLang token_usage).",
            ["deployment", "replica"],
        )
        self.engine_age = engine_gauge(
            "rightsize_local_engine_reading_age_seconds",
            "Age of the last load reading of a local engine (stale past local_backend."
            "stale_after_s).",
            ["deployment", "replica"],
        )
        self.engine_healthy = engine_gauge(
            "rightsize_local_engine_replica_healthy",
            "1 while a local engine replica is in rotation, 0 while out (probes or breaker).",
            ["deployment", "replica"],
        )
        self.engine_spilled = engine_gauge(
            "rightsize_local_engine_spilled",
            "1 while a local deployment spills new requests to the next tier.",
            ["deployment"],
        )
        self.latency_broken = engine_gauge(
            "rightsize_deployment_latency_objective_broken",
            "1 while a deployment breaks its tier's latency objective (avoided by interactive "
            "requests but for half-open probes), 0 while within it; this process's view.",
            ["deployment"],
        )
        self.budget_used = Gauge(
            "rightsize_budget_used_ratio",
            "The largest share (spent + held) / limit over a team's USD and token budgets in "
            "their current windows (rate limits aside); 1 is the limit. Read at each scrape.",
            ["team"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.overhead = Histogram(
            "rightsize_gateway_overhead_seconds",
            "Gateway time per request, the upstream call excluded.",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.spend_replayed = Counter(
            "rightsize_spend_log_rows_replayed",
            "Spend-log rows written from the fallback file or dead processes' journals.",
            registry=registry,
        )
        self.spend_unwritten = Counter(
            "rightsize_spend_log_rows_unwritten",
            "Spend-log rows the store refused, kept in the fallback file for a replay.",
            registry=registry,
        )
        # Per process, summed over the live ones: a dead worker's rows are replayed by another.
        self.spend_failing = Gauge(
            "rightsize_spend_log_rows_still_failing",
            "Rows the last replay of the fallback file could not write (they stay in it).",
            multiprocess_mode="livesum",
            registry=registry,
        )

    @classmethod
    def from_environment(cls) -> Metrics:
        """Multiprocess mode where the supervisor (or the operator) set its directory."""
        directory = os.environ.get(MULTIPROC_ENV)
        return cls(Path(directory) if directory else None)

    def observe(
        self,
        record: SpendRecord,
        *,
        held: bool,
        first_token_ms: float | None = None,
        rules: Iterable[str] = (),
    ) -> None:
        """Count one finished request from its spend record; `held` when the ledger held it,
        `first_token_ms` for a stream (when its first chunk arrived)."""
        team = record.team or ""
        deployment = record.deployment or ""
        self._child(self.requests, team, record.tier or "", deployment, str(record.status)).inc()
        if record.overhead_ms is not None:
            self.overhead.observe(record.overhead_ms / 1000)
        if held:
            self._child(self.holds, team).inc()
        denial = _DENIALS.get(record.error_type or "") if record.status == 429 else None
        if denial is not None:
            self._child(self.denials, team, denial).inc()
        if record.cache_hit:
            if record.saved_usd:
                self._child(self.saved, team).inc(float(record.saved_usd))
            return
        if record.reasoning_demand is not None:
            self.demand.observe(record.reasoning_demand)
        if not deployment:
            return  # refused before a decision
        requested = "auto" if record.requested_model == "auto" else "named"
        self._child(self.decisions, record.tier or "", requested).inc()
        for rule in rules:
            self._child(self.rules, record.tier or "", rule).inc()
        if record.attempts > 1:
            self._child(self.fallbacks, deployment).inc(record.attempts - 1)
        if record.upstream_ms:
            self._child(self.upstream, deployment).observe(record.upstream_ms / 1000)
        if first_token_ms is not None:
            self._child(self.first_token, deployment).observe(first_token_ms / 1000)
        if record.prompt_tokens:
            self._child(self.tokens, team, deployment, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._child(self.tokens, team, deployment, "completion").inc(record.completion_tokens)
        if record.cost_usd:
            self._child(self.cost, team, deployment).inc(float(record.cost_usd))

    # The prompt cache's observer (gateway.cache.CacheObserver).

    def cache_result(self, team: str, result: str) -> None:
        self._child(self.cache, team, result).inc()

    def cache_bypass(self, reason: str) -> None:
        self._child(self.cache_bypasses, reason).inc()

    # The shadow runner's observer (gateway.shadow.ShadowObserver).

    def shadow_job(self, team: str, result: str) -> None:
        self._child(self.shadow, team, result).inc()

    # The spend writer's observer (gateway.spend.SpendObserver); called on its thread.

    def rows_replayed(self, count: int) -> None:
        self.spend_replayed.inc(count)

    def rows_unwritten(self, count: int) -> None:
        self.spend_unwritten.inc(count)

    def rows_still_failing(self, count: int) -> None:
        self.spend_failing.set(count)

    def latency_objectives(self, gates: Iterable[GateReport]) -> None:
        """Set each measured deployment's latency-objective state (before a scrape)."""
        for gate in gates:
            self._child(self.latency_broken, gate.deployment).set(1 if gate.broken else 0)

    def local_engines(self, replicas: Iterable[ReplicaReport]) -> None:
        """Set the local-engine gauges from the probes' view (before a scrape)."""
        for r in replicas:
            labels = (r.deployment, _without_credentials(r.replica))
            self._child(self.engine_healthy, *labels).set(1 if r.healthy else 0)
            self._child(self.engine_spilled, r.deployment).set(1 if r.spilled else 0)
            readings = (
                (self.engine_waiting, r.waiting),
                (self.engine_running, r.running),
                (self.engine_kv, r.kv_usage),
                (self.engine_age, r.age_s),
            )
            for gauge, value in readings:
                # No reading (an engine without metrics, or none yet): no value, never a 0.
                if value is not None:
                    self._child(gauge, *labels).set(value)

    def budgets_used(self, used: Iterable[tuple[str, float]]) -> None:
        """Set each budgeted team's used share (before a scrape)."""
        for team, share in used:
            self._child(self.budget_used, team).set(share)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """The Prometheus text of every series (all workers' sums in multiprocess mode)."""
        if self._registry is not None:
            return generate_latest(self._registry)
        # A fresh registry per scrape, as the library's multiprocess mode asks.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiproc_dir))
        return generate_latest(registry)

    def process_ended(self) -> None:
        """Drop this process's live gauges from the sums (its counters stay: they happened)."""
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiproc_dir))


def _without_credentials(url: str) -> str:
    return str(URL(url).with_user(None))


def new_multiproc_dir() -> Path:
    """A temporary multiprocess directory for this `serve` run, named for its pid; those of
    earlier runs whose supervisor died without removing its own (SIGKILL) are removed first."""
    parent = Path(tempfile.gettempdir())
    for stale in parent.glob(f"{_DIR_PREFIX}*"):
        pid = stale.name[len(_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def prepare_multiproc_dir(directory: Path) -> None:
    """Empty a multiprocess directory before any worker writes to it: files left by an earlier
    run would be summed into this one's counters."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
