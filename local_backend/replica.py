"""One replica of a local deployment: its health (probes and a circuit breaker) and its load."""

from __future__ import annotations

from dataclasses import dataclass

from local_backend.prometheus import EngineLoad


@dataclass(slots=True)
class Reading:
    """A load reading and when it was taken (monotonic seconds)."""

    load: EngineLoad
    at: float


@dataclass(slots=True)
class Replica:
    """What the gateway knows of one engine process; mutated by the probes and the calls."""

    url: str  # the OpenAI base URL, e.g. http://gpu1:8000/v1
    probe_failures: int = 0  # consecutive failed health probes
    upstream_failures: int = 0  # consecutive failed calls (the breaker counts these)
    open_until: float | None = None  # breaker open: out of rotation until a probe after this
    probed: bool = False  # a health probe has answered at least once
    reading: Reading | None = None
    in_flight: int = 0  # requests this process has sent and not finished
    sent_since_reading: int = 0  # requests sent after the last load reading
    last_error: str = ""

    def healthy(self, unhealthy_after: int) -> bool:
        """In rotation: fewer than `unhealthy_after` failed probes in a row, breaker closed."""
        return self.probe_failures < unhealthy_after and self.open_until is None

    def fresh(self, now: float, stale_after_s: float) -> EngineLoad | None:
        """The last load reading if it is recent enough; None: unknown."""
        reading = self.reading
        if reading is None or now - reading.at > stale_after_s:
            return None
        return reading.load

    def probe_passed(self, now: float) -> None:
        self.probe_failures, self.probed = 0, True
        if self.open_until is not None and now >= self.open_until:
            # Half-open: the cool-down is over and the engine answers again.
            self.open_until, self.upstream_failures = None, 0

    def probe_failed(self, why: str) -> None:
        self.probe_failures += 1
        self.last_error = why

    def call_passed(self) -> None:
        self.upstream_failures = 0

    def call_failed(self, why: str, now: float, threshold: int, open_s: float) -> None:
        self.upstream_failures += 1
        self.last_error = why
        if self.upstream_failures >= threshold:
            self.open_until = now + open_s

    def read(self, load: EngineLoad, now: float) -> None:
        self.reading, self.sent_since_reading = Reading(load, now), 0
