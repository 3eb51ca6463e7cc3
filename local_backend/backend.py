"""The local tier's state: replicas per deployment, their health and load, picking and spill."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from local_backend.affinity import PrefixTable, prefix_hashes, prompt_text
from local_backend.prometheus import ENGINES_WITH_METRICS, EngineLoad
from local_backend.replica import Replica
from local_backend.settings import LocalBackendSettings
from local_backend.spill import SpillGate
from policies import Deployment, DeploymentState


@dataclass(frozen=True, slots=True)
class Pick:
    """The replicas to try for one request, best first, and whether the first holds its prefix."""

    replicas: tuple[Replica, ...]
    prefix_hit: bool
    hashes: tuple[bytes, ...]


@dataclass(slots=True)
class _Pool:
    deployment: Deployment
    replicas: list[Replica]
    gate: SpillGate
    turn: itertools.count  # ties between equally loaded replicas go round in turn


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One replica as the probes last saw it, for the gateway's metrics."""

    deployment: str
    replica: str  # its base URL as configured
    healthy: bool
    spilled: bool  # the deployment's spill gate
    waiting: float | None  # None: no reading (engines without metrics, or none yet)
    running: float | None
    kv_usage: float | None
    age_s: float | None  # how old the reading is
    in_flight: int  # requests this process has sent it and not finished


class LocalBackend:
    """Every deployment with an `engine`: fed by the probe loop and by the gateway's own calls."""

    def __init__(
        self,
        deployments: Iterable[Deployment],
        settings: LocalBackendSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._pools = {
            d.name: _Pool(d, [Replica(url) for url in d.replicas], SpillGate(settings.spill),
                          itertools.count())
            for d in deployments
            if d.engine is not None
        }  # fmt: skip
        self._prefixes = PrefixTable(settings.affinity.max_entries)

    def manages(self, deployment: Deployment) -> bool:
        return deployment.name in self._pools

    def deployments(self) -> list[Deployment]:
        return [pool.deployment for pool in self._pools.values()]

    def replicas(self, name: str) -> list[Replica]:
        return list(self._pools[name].replicas)

    def healthy(self, replica: Replica) -> bool:
        return replica.healthy(self.settings.unhealthy_after)

    # -- what the policy sees ---------------------------------------------------------------

    def states(self) -> dict[str, DeploymentState]:
        """Each local deployment's health and load for `PolicyEngine.decide`."""
        now = self._clock()
        states = {}
        for name, pool in self._pools.items():
            healthy = [r for r in pool.replicas if self.healthy(r)]
            loads = [self._load(pool.deployment, r, now) for r in healthy]
            ages = [now - r.reading.at for r in healthy if r.reading is not None]
            high = self.settings.spill.queue_high
            states[name] = DeploymentState(
                healthy=bool(healthy),
                load=min(min(loads, default=0.0) / high, 1.0) if high else 0.0,
                spill=pool.gate.why if pool.gate.spilled else None,
                age_s=min(ages) if ages else None,
            )
        return states

    def report(self) -> list[ReplicaReport]:
        """Every replica's health and last reading (this process's view)."""
        now = self._clock()
        out = []
        for name, pool in self._pools.items():
            for replica in pool.replicas:
                reading = replica.reading
                load = reading.load if reading is not None else None
                out.append(
                    ReplicaReport(
                        deployment=name,
                        replica=replica.url,
                        healthy=self.healthy(replica),
                        spilled=pool.gate.spilled,
                        waiting=load.waiting if load is not None else None,
                        running=load.running if load is not None else None,
                        kv_usage=load.kv_usage if load is not None else None,
                        age_s=now - reading.at if reading is not None else None,
                        in_flight=replica.in_flight,
                    )
                )
        return out

    def refresh(self) -> None:
        """Move each deployment's spill gate on what is known now (after each probe round)."""
        now = self._clock()
        for pool in self._pools.values():
            signal, source = self._signal(pool, now)
            pool.gate.update(signal, source)

    def _signal(self, pool: _Pool, now: float) -> tuple[EngineLoad | None, str]:
        healthy = [r for r in pool.replicas if self.healthy(r)]
        if not healthy:
            return None, ""
        if pool.deployment.engine in ENGINES_WITH_METRICS:
            fresh = [
                load
                for r in healthy
                if (load := r.fresh(now, self.settings.stale_after_s)) is not None
            ]
            if not fresh:
                return None, ""  # stale or missing everywhere: unknown, the gate holds
            kv = [f.kv_usage for f in fresh if f.kv_usage is not None]
            least = EngineLoad(
                waiting=min(f.waiting for f in fresh),
                running=min(f.running for f in fresh),
                kv_usage=min(kv) if kv else None,
            )
            return least, f"{pool.deployment.engine} metrics"
        in_flight = min(r.in_flight for r in healthy)
        return EngineLoad(waiting=in_flight, running=0, kv_usage=None), "gateway in-flight"

    # -- picking a replica ------------------------------------------------------------------

    def pick(self, deployment: Deployment, messages: Sequence[dict[str, Any]]) -> Pick:
        """Healthy replicas, best first: the prefix's last replica while its load allows,
        else the least loaded (ties in turn)."""
        pool = self._pools[deployment.name]
        now = self._clock()
        healthy = [r for r in pool.replicas if self.healthy(r)]
        if not healthy:
            return Pick((), False, ())
        turn = next(pool.turn)
        size = len(pool.replicas)
        order = {r.url: (i - turn) % size for i, r in enumerate(pool.replicas)}
        ranked = sorted(healthy, key=lambda r: (self._load(deployment, r, now), order[r.url]))
        affinity = self.settings.affinity
        hashes: list[bytes] = []
        hit = False
        if affinity.enabled and len(healthy) > 1:
            seed = deployment.name.encode() + b"\0"
            hashes = prefix_hashes(
                seed + prompt_text(messages), affinity.block_chars, affinity.max_blocks
            )
            owner, depth = self._prefixes.longest(hashes)
            if owner is not None and depth >= affinity.min_blocks:
                least = self._load(deployment, ranked[0], now)
                for replica in ranked:
                    if replica.url == owner:
                        if self._load(deployment, replica, now) <= least + affinity.load_slack:
                            ranked.remove(replica)
                            ranked.insert(0, replica)
                            hit = True
                        break
        return Pick(tuple(ranked), hit, tuple(hashes))

    def _load(self, deployment: Deployment, replica: Replica, now: float) -> float:
        """Requests ahead of a new one: the engine's last count plus what was sent since;
        without a reading, this process's own in-flight count."""
        reading = replica.reading
        if deployment.engine in ENGINES_WITH_METRICS and reading is not None:
            # A stale reading still counts (unknown is not idle), topped up by what was sent.
            return reading.load.waiting + reading.load.running + replica.sent_since_reading
        return float(replica.in_flight)

    # -- what the calls report --------------------------------------------------------------

    def sent(self, pick: Pick, replica: Replica) -> None:
        replica.in_flight += 1
        replica.sent_since_reading += 1
        if pick.hashes:
            self._prefixes.remember(pick.hashes, replica.url)

    def finished(self, replica: Replica, error: str | None) -> None:
        """A call ended: an error counts towards the replica's breaker, a success resets it."""
        replica.in_flight -= 1
        if error is None:
            replica.call_passed()
        else:
            settings = self.settings
            replica.call_failed(
                error, self._clock(), settings.breaker_failures, settings.breaker_open_s
            )

    def priority(self, deployment: Deployment, token_budget_p50: int | None) -> int | None:
        """vLLM's request priority (lower runs first) from the predicted answer length."""
        if (
            not self.settings.priority_hint
            or deployment.engine != "vllm"
            or token_budget_p50 is None
        ):
            return None
        return int(token_budget_p50 // self.settings.priority_bucket_tokens)
