"""Spill-over with hysteresis: leave at a high threshold, come back only below a lower one."""

from __future__ import annotations

from dataclasses import dataclass

from local_backend.prometheus import EngineLoad
from local_backend.settings import SpillSettings


@dataclass(slots=True)
class SpillGate:
    """Whether a local deployment sends new requests elsewhere, and why."""

    rule: SpillSettings
    spilled: bool = False
    why: str = ""

    def update(self, load: EngineLoad | None, source: str = "metrics") -> bool:
        """Feed one reading; None (stale or missing) holds the current state, never reads idle."""
        if load is None:
            return self.spilled
        rule, kv = self.rule, load.kv_usage
        if not self.spilled:
            if load.waiting >= rule.queue_high:
                self.spilled = True
                self.why = f"queue {load.waiting:g} >= queue_high {rule.queue_high:g} ({source})"
            elif kv is not None and kv >= rule.kv_high:
                self.spilled = True
                self.why = f"KV cache {kv:.0%} >= kv_high {rule.kv_high:.0%} ({source})"
        elif load.waiting <= rule.queue_low and (kv is None or kv <= rule.kv_low):
            self.spilled, self.why = False, ""
        return self.spilled
