"""Latency classes of requests, and the tiers' latency objectives measured per deployment.

A deployment whose p95 breaks its tier's objective (policy.tiers[].latency) is avoided by
interactive traffic until it recovers: it breaks above the objective, recovers only below
`recover_ratio` x the objective, on fresh samples, after a minimum dwell, so a noisy series near
the objective does not flap. While avoided it receives no traffic of its own, so it is
half-open: one request every `probe_every_s` goes to it, and those requests' latencies decide
its recovery. The policy sees it through DeploymentState.slow, as it sees local engines' spill.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.errors import InvalidRequest
from gateway.store import ApiKey
from policies import (
    LATENCY_CLASSES,
    Decision,
    DeploymentState,
    LatencyObjective,
    PolicyEngine,
)

LATENCY_HEADER = "x-rightsize-latency"


@dataclass(frozen=True, slots=True)
class RequestedClass:
    """The latency class a caller named, and where; None: let the policy decide."""

    latency_class: str | None
    source: str = ""


def requested_class(headers: Mapping[str, str], key: ApiKey) -> RequestedClass:
    """The class from the header, else the key's default, else the team's; a header naming
    no class is a 400 that lists the allowed ones."""
    sent = headers.get(LATENCY_HEADER)
    if sent is not None:
        value = sent.strip().lower()
        if value not in LATENCY_CLASSES:
            raise InvalidRequest(
                f"Invalid {LATENCY_HEADER} header {sent[:64]!r}: "
                f"use one of {', '.join(LATENCY_CLASSES)}",
                code="invalid_latency_class",
            )
        return RequestedClass(value, f"{LATENCY_HEADER} header")
    if key.latency_class is not None:
        return RequestedClass(key.latency_class, "key default")
    if key.team_latency_class is not None:
        return RequestedClass(key.team_latency_class, "team default")
    return RequestedClass(None)


def served_now(decision: Decision) -> str | None:
    """What the route reason says of a batch or background chat request: answered at once."""
    if decision.latency_class == "interactive":
        return None
    return (
        f"{decision.latency_class} request answered synchronously and priced interactively "
        "(send Prefer: respond-async to defer it to the batch queue)"
    )


def p95(values: Iterable[float]) -> float:
    """Nearest-rank 95th percentile of a non-empty series."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(slots=True)
class LatencyGate:
    """One deployment against its tier's objective: break, half-open probes, recover."""

    objective: LatencyObjective
    broken: bool = False
    why: str = ""
    since: float = 0.0  # when it broke (the clock's time)
    last_probe: float = 0.0
    ttft: deque[float] = field(init=False)
    total: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.ttft = deque(maxlen=self.objective.window)
        self.total = deque(maxlen=self.objective.window)

    def observe(self, ttft_ms: float | None, total_ms: float, now: float) -> bool:
        """Feed one served request's latencies; the state after it (True: broken)."""
        if ttft_ms is not None:
            self.ttft.append(ttft_ms)
        self.total.append(total_ms)
        if not self.broken:
            over = self._over(self.objective.min_samples, 1.0)
            if over:
                self.broken, self.why, self.since, self.last_probe = True, over, now, now
                # Recovery is judged on requests after the break only.
                self.ttft.clear()
                self.total.clear()
        elif now - self.since >= self.objective.min_dwell_s and self._within():
            self.broken, self.why = False, ""
        return self.broken

    def avoid(self, now: float) -> str | None:
        """Why to avoid it now; None when it is within its objective or a probe is due."""
        if not self.broken:
            return None
        if now - self.last_probe >= self.objective.probe_every_s:
            return None
        return self.why

    def probed(self, now: float) -> None:
        """A request was sent to it while broken: the next probe waits `probe_every_s`."""
        if self.broken:
            self.last_probe = now

    def _over(self, min_samples: int, ratio: float) -> str:
        o = self.objective
        for name, series, bound in (
            ("time to first token", self.ttft, o.ttft_p95_ms),
            ("total", self.total, o.total_p95_ms),
        ):
            if bound is not None and len(series) >= min_samples:
                measured = p95(series)
                if measured > bound * ratio:
                    return (
                        f"p95 {name} {measured:.0f} ms > {bound * ratio:.0f} ms "
                        f"over its last {len(series)} requests"
                    )
        return ""

    def _within(self) -> bool:
        o = self.objective
        # Every request measures its total; only streams measure a time to first token.
        if len(self.total) < o.recover_samples:
            return False
        return not self._over(o.recover_samples, o.recover_ratio)


@dataclass(frozen=True, slots=True)
class GateReport:
    deployment: str
    broken: bool


class LatencyWatch:
    """Every deployment of a tier with a latency objective, measured by this process."""

    def __init__(self, policy: PolicyEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._gates: dict[str, LatencyGate] = {}
        for tier in policy.spec.tiers:
            if tier.latency is not None:
                for name in tier.deployments:
                    # A deployment in several tiers: the first tier's objective judges it.
                    self._gates.setdefault(name, LatencyGate(tier.latency))

    @property
    def enabled(self) -> bool:
        return bool(self._gates)

    def observe(self, deployment: str, ttft_ms: float | None, total_ms: float) -> None:
        gate = self._gates.get(deployment)
        if gate is not None:
            gate.observe(ttft_ms, total_ms, self.clock())

    def states(
        self, base: Mapping[str, DeploymentState] | None
    ) -> Mapping[str, DeploymentState] | None:
        """`base` (the local backend's) with each deployment avoided for its latency."""
        if not self._gates:
            return base
        now = self.clock()
        merged = dict(base or {})
        for name, gate in self._gates.items():
            why = gate.avoid(now)
            if why is not None:
                merged[name] = replace(merged.get(name, DeploymentState()), slow=why)
        return merged

    def chosen(self, deployment: str) -> str | None:
        """Note that `deployment` was picked; a broken one was picked as its half-open probe,
        and the words for the route reason say so."""
        gate = self._gates.get(deployment)
        if gate is None or not gate.broken:
            return None
        now = self.clock()
        if gate.avoid(now) is not None:
            return f"{deployment!r} breaks its latency objective, but nothing else could serve"
        gate.probed(now)
        return f"half-open probe of {deployment!r} (latency objective broken: {gate.why})"

    def report(self) -> list[GateReport]:
        return [GateReport(name, gate.broken) for name, gate in self._gates.items()]


def latency_watch(policy: PolicyEngine) -> LatencyWatch | None:
    """The latency objectives' measurements, when a tier has one."""
    watch = LatencyWatch(policy)
    return watch if watch.enabled else None


def objectives(policy: PolicyEngine) -> list[tuple[str, tuple[str, ...], Any]]:
    """What a LatencyWatch is built from: each tier's deployments and objective."""
    return [(t.name, tuple(t.deployments), t.latency) for t in policy.spec.tiers if t.latency]
