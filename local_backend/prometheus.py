"""Engine load from Prometheus text: vLLM's and SGLang's gauges, summed over their series."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Gauges per engine: waiting, running, KV-cache use (0..1). vLLM 0.6-0.9 called the last one
# gpu_cache_usage_perc; v1 engines kv_cache_usage_perc.
_NAMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vllm": (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    "sglang": ("sglang:num_queue_reqs", "sglang:num_running_reqs", ("sglang:token_usage",)),
}

ENGINES_WITH_METRICS = frozenset(_NAMES)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One reading of an engine's scheduler: queued and running requests, KV-cache use."""

    waiting: float
    running: float
    kv_usage: float | None


class MetricsFormatError(ValueError):
    """The text has none of the engine's load gauges (wrong engine, or metrics disabled)."""


def parse_engine_load(engine: str, text: str, model: str | None = None) -> EngineLoad:
    """The engine's load; series of other models (a `model_name` label) are left out.

    Counts are summed over series (data-parallel engines publish one per engine rank), KV use
    is the highest of them: one full rank is enough to queue.
    """
    waiting_name, running_name, kv_names = _NAMES[engine]
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served = sample.labels.get("model_name")
            if model is not None and served is not None and served != model:
                continue
            if math.isnan(sample.value):
                continue
            values.setdefault(sample.name, []).append(sample.value)
    if waiting_name not in values:
        raise MetricsFormatError(f"no {waiting_name} gauge in the engine's /metrics")
    kv = next((values[n] for n in kv_names if n in values), None)
    return EngineLoad(
        waiting=sum(values[waiting_name]),
        running=sum(values.get(running_name, [0.0])),
        kv_usage=max(kv) if kv else None,
    )
