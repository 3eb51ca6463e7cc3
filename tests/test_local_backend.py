"""local_backend alone: metric formats, spill hysteresis, staleness, breaker, replica picking."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from local_backend import (
    EngineLoad,
    LocalBackend,
    LocalBackendSettings,
    MetricsFormatError,
    SpillGate,
    SpillSettings,
    engine_root,
    health_url,
    parse_engine_load,
)
from policies import Capabilities, Deployment, TokenPrice
from tests.fake_engine import sglang_metrics, vllm_metrics

FREE = TokenPrice(Decimal(0), Decimal(0), Decimal(0))


def local(name: str = "local", engine: str = "vllm", replicas: int = 2) -> Deployment:
    urls = tuple(f"http://10.0.0.{i}:8000/v1" for i in range(1, replicas + 1))
    return Deployment(
        name, f"openai/{name}-upstream", urls[0], None, "local", "openai_http", 60, FREE,
        Capabilities(), True, engine=engine, replicas=urls,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(*deployments: Deployment, **overrides: Any) -> tuple[LocalBackend, Clock]:
    clock = Clock()
    settings = LocalBackendSettings.model_validate(overrides)
    return LocalBackend(deployments or (local(),), settings, clock), clock


# -- metric formats -------------------------------------------------------------------------


def test_vllm_exposition_is_read_for_the_served_model_only() -> None:
    text = vllm_metrics("m", waiting=5, running=3, kv=0.42) + vllm_metrics("other", 99, 99, 0.99)
    assert parse_engine_load("vllm", text, "m") == EngineLoad(5, 3, 0.42)


def test_vllm_data_parallel_ranks_are_summed_and_the_fullest_kv_cache_counts() -> None:
    text = vllm_metrics("m", 2, 1, 0.3) + vllm_metrics("m", 3, 4, 0.9).replace(
        'engine="0"', 'engine="1"'
    ).replace("# HELP", "# XHELP").replace("# TYPE", "# XTYPE")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("# X"))
    assert parse_engine_load("vllm", text, "m") == EngineLoad(5, 5, 0.9)


def test_older_vllm_gpu_cache_usage_name_is_read() -> None:
    text = vllm_metrics("m", 1, 0, 0.7).replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_engine_load("vllm", text, "m").kv_usage == 0.7


def test_sglang_exposition_is_read() -> None:
    text = sglang_metrics("meta-llama/Llama-3.1-8B-Instruct", waiting=12, running=7, kv=0.28)
    load = parse_engine_load("sglang", text, "meta-llama/Llama-3.1-8B-Instruct")
    assert load == EngineLoad(12, 7, 0.28)


def test_metrics_of_another_engine_are_refused_not_read_as_idle() -> None:
    with pytest.raises(MetricsFormatError):
        parse_engine_load("vllm", sglang_metrics("m", 0, 0, 0), "m")


def test_probe_urls_follow_each_engine() -> None:
    assert engine_root("http://h:8000/v1/") == "http://h:8000"
    assert health_url("vllm", "http://h:8000/v1") == "http://h:8000/health"
    assert health_url("ollama", "http://h:11434/v1") == "http://h:11434/api/version"
    assert health_url("openai", "http://h:9/v1") == "http://h:9/v1/models"


# -- spill hysteresis -----------------------------------------------------------------------

RULE = SpillSettings(queue_high=8, queue_low=2, kv_high=0.95, kv_low=0.85)


def test_queue_past_high_spills_and_only_below_low_returns() -> None:
    gate = SpillGate(RULE)
    states = [gate.update(EngineLoad(q, 0, 0.1)) for q in (0, 7, 8, 5, 3, 2, 7)]
    assert states == [False, False, True, True, True, False, False]
    assert gate.why == ""


def test_kv_cache_past_high_spills_with_its_reason() -> None:
    gate = SpillGate(RULE)
    assert gate.update(EngineLoad(0, 0, 0.96), "vllm metrics")
    assert gate.why == "KV cache 96% >= kv_high 95% (vllm metrics)"
    assert gate.update(EngineLoad(0, 0, 0.9))  # under high, above low: still spilled
    assert not gate.update(EngineLoad(0, 0, 0.8))


def test_unknown_load_holds_the_state_either_way() -> None:
    gate = SpillGate(RULE)
    gate.update(EngineLoad(20, 0, 0.1))
    assert gate.update(None) and gate.update(None)
    gate.update(EngineLoad(0, 0, 0.1))
    assert not gate.update(None)


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(0, 12),
    noise=st.lists(st.floats(-2.9, 2.9), min_size=1, max_size=300),
)
def test_a_noisy_series_flips_only_when_it_crosses_the_whole_band(
    base: float, noise: list[float]
) -> None:
    """Every flip is justified by its own reading, and between two flips the series went from
    one side of the band to the other: noise narrower than the band cannot flap."""
    gate = SpillGate(RULE)
    previous = False
    flips = []
    for i, step in enumerate(noise):
        queue = max(base + step, 0.0)
        spilled = gate.update(EngineLoad(queue, 0, None))
        if spilled != previous:
            flips.append(i)
            assert queue >= RULE.queue_high if spilled else queue <= RULE.queue_low
        previous = spilled
    # Noise of +-2.9 around one base spans 5.8 < the band's 6: at most one flip.
    assert len(flips) <= 1


# -- staleness, health, breaker -------------------------------------------------------------


def test_stale_metrics_are_unknown_and_a_spilled_deployment_stays_spilled() -> None:
    lb, clock = backend(stale_after_s=5)
    for replica in lb.replicas("local"):
        replica.read(EngineLoad(20, 4, 0.5), clock.now)
    lb.refresh()
    state = lb.states()["local"]
    assert state.spill is not None and state.spill.startswith("queue 20 >= queue_high 8")
    clock.now += 60  # no reading since: stale
    lb.refresh()
    state = lb.states()["local"]
    assert state.spill is not None, "a stale reading must not read as idle"
    assert state.age_s == 60


def test_gateway_in_flight_is_the_load_of_an_engine_without_metrics() -> None:
    lb, _ = backend(local(engine="llamacpp", replicas=1), spill={"queue_high": 2, "queue_low": 0})
    (replica,) = lb.replicas("local")
    pick = lb.pick(lb.deployments()[0], [])
    lb.sent(pick, replica)
    lb.sent(pick, replica)
    lb.refresh()
    assert lb.states()["local"].spill == "queue 2 >= queue_high 2 (gateway in-flight)"
    lb.finished(replica, None)
    lb.finished(replica, None)
    lb.refresh()
    assert lb.states()["local"].spill is None


def test_breaker_opens_after_consecutive_errors_and_a_probe_after_the_cool_down_closes_it() -> None:
    lb, clock = backend(breaker_failures=3, breaker_open_s=10)
    first, second = lb.replicas("local")
    pick = lb.pick(lb.deployments()[0], [])
    for _ in range(3):
        lb.sent(pick, first)
        lb.finished(first, "connection failed")
    assert not lb.healthy(first) and lb.healthy(second)
    assert [r.url for r in lb.pick(lb.deployments()[0], []).replicas] == [second.url]
    first.probe_passed(clock.now + 5)  # still cooling down: stays out
    assert not lb.healthy(first)
    clock.now += 11
    first.probe_passed(clock.now)
    assert lb.healthy(first)


def test_no_healthy_replica_makes_the_deployment_unhealthy_for_the_policy() -> None:
    lb, _ = backend(unhealthy_after=2)
    for replica in lb.replicas("local"):
        replica.probe_failed("refused")
        replica.probe_failed("refused")
    assert lb.states()["local"].healthy is False


# -- picking --------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 40}


def test_least_loaded_replica_first() -> None:
    lb, clock = backend()
    first, second = lb.replicas("local")
    first.read(EngineLoad(5, 2, 0.3), clock.now)
    second.read(EngineLoad(1, 2, 0.3), clock.now)
    assert lb.pick(lb.deployments()[0], []).replicas[0] is second


def test_a_shared_long_prefix_returns_to_its_replica_while_its_load_allows() -> None:
    lb, clock = backend(affinity={"load_slack": 2, "block_chars": 64, "min_blocks": 2})
    deployment = lb.deployments()[0]
    first, second = lb.replicas("local")
    for replica in (first, second):
        replica.read(EngineLoad(0, 0, 0.1), clock.now)
    talk = [SYSTEM, {"role": "user", "content": "first question"}]
    pick = lb.pick(deployment, talk)
    served = pick.replicas[0]
    lb.sent(pick, served)
    lb.finished(served, None)
    other = second if served is first else first
    follow_up = [
        *talk,
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "more"},
    ]
    again = lb.pick(deployment, follow_up)
    assert again.prefix_hit and again.replicas[0] is served
    # Its replica now far busier than the other: load wins over the prefix.
    served.read(EngineLoad(10, 0, 0.1), clock.now)
    busy = lb.pick(deployment, follow_up)
    assert not busy.prefix_hit and busy.replicas[0] is other


def test_a_short_common_prefix_is_no_affinity() -> None:
    lb, _ = backend(affinity={"block_chars": 256, "min_blocks": 2})
    deployment = lb.deployments()[0]
    pick = lb.pick(deployment, [{"role": "user", "content": "hi"}])
    lb.sent(pick, pick.replicas[0])
    assert not lb.pick(deployment, [{"role": "user", "content": "hi"}]).prefix_hit


def test_priority_hint_only_when_enabled_and_only_for_vllm() -> None:
    off, _ = backend()
    assert off.priority(local(), 500) is None
    on, _ = backend(priority_hint=True, priority_bucket_tokens=128)
    assert on.priority(local(), 100) == 0
    assert on.priority(local(), 500) == 3
    assert on.priority(local(engine="sglang"), 500) is None


# -- configuration --------------------------------------------------------------------------


def test_an_engine_implies_local_and_the_direct_transport() -> None:
    from policies import ModelSpec

    spec = ModelSpec.model_validate(
        {"name": "gpu", "model": "openai/m", "engine": "sglang", "api_base": "http://h:30000/v1"}
    )
    assert (spec.local, spec.transport, spec.replicas) == (True, "openai_http", [])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"engine": "vllm", "api_base": "http://h/v1", "transport": "litellm"}, "openai_http"),
        ({"replicas": ["http://h/v1"]}, "replicas need an engine"),
        ({"engine": "vllm"}, "needs api_base or replicas"),
    ],
)
def test_engine_settings_that_cannot_work_are_refused(extra: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    from policies import ModelSpec

    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate({"name": "gpu", "model": "openai/m", **extra})


def test_spill_thresholds_must_leave_a_band() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="hysteresis"):
        SpillSettings(queue_high=4, queue_low=4)
