"""Must show 3 (issue 26): a tier breaking its latency objective is avoided by interactive
traffic, and returns after recovery (half-open probes), without flapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.latency import LatencyGate, p95
from policies import LatencyObjective
from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.test_metrics import scrape, total

OBJECTIVE = LatencyObjective(
    total_p95_ms=100,
    recover_ratio=0.8,
    window=20,
    min_samples=5,
    recover_samples=3,
    min_dwell_s=30,
    probe_every_s=10,
)


def test_p95_is_the_nearest_rank() -> None:
    assert p95(range(1, 101)) == 95
    assert p95([5.0, 1.0, 3.0]) == 5.0


def test_a_deployment_breaks_only_past_min_samples_and_above_its_objective() -> None:
    gate = LatencyGate(OBJECTIVE)
    for _ in range(4):
        assert not gate.observe(None, 500, now=0)  # four samples: too few to judge
    assert gate.observe(None, 500, now=1)
    assert "p95 total 500 ms > 100 ms" in gate.why


def test_a_broken_deployment_lets_one_probe_through_every_probe_every_s() -> None:
    gate = LatencyGate(OBJECTIVE)
    for _ in range(5):
        gate.observe(None, 500, now=0)
    assert gate.avoid(now=9.9) is not None
    assert gate.avoid(now=10) is None  # a probe is due
    gate.probed(now=10)
    assert gate.avoid(now=10) is not None  # the next one waits
    assert gate.avoid(now=20) is None


def test_recovery_needs_fresh_samples_below_the_lower_band_and_the_dwell() -> None:
    gate = LatencyGate(OBJECTIVE)
    for _ in range(5):
        gate.observe(None, 500, now=0)
    for t in (1, 2, 3):
        assert gate.observe(None, 90, now=t)  # under the objective, above 80: stays broken
    gate = LatencyGate(OBJECTIVE)
    for _ in range(5):
        gate.observe(None, 500, now=0)
    for t in (1, 2, 3):
        assert gate.observe(None, 50, now=t)  # fast, but within the minimum dwell
    assert not gate.observe(None, 50, now=30)


def test_a_ttft_objective_is_judged_on_streams_only() -> None:
    gate = LatencyGate(LatencyObjective(ttft_p95_ms=100, min_samples=2, window=10))
    assert not gate.observe(None, 900, now=0)
    assert not gate.observe(None, 900, now=0)  # whole calls are slow, no first token judged
    gate.observe(300, 900, now=0)
    assert gate.observe(300, 900, now=0)
    assert "time to first token" in gate.why


@settings(max_examples=200, deadline=None)
@given(
    noise=st.lists(st.floats(min_value=81, max_value=130), min_size=1, max_size=300),
    gaps=st.lists(st.floats(min_value=0, max_value=20), min_size=300, max_size=300),
)
def test_a_noisy_series_near_the_objective_changes_state_at_most_once(
    noise: list[float], gaps: list[float]
) -> None:
    # Every sample above the recovery band (80 ms): once broken, it never recovers, and it
    # never flaps back and forth however the noise crosses the objective itself.
    gate, now, changes, last = LatencyGate(OBJECTIVE), 0.0, 0, False
    for sample, gap in zip(noise, gaps, strict=False):
        now += gap
        state = gate.observe(None, sample, now)
        changes += state != last
        last = state
    assert changes <= 1


@settings(max_examples=200, deadline=None)
@given(
    series=st.lists(
        st.tuples(st.floats(min_value=1, max_value=300), st.floats(min_value=0, max_value=20)),
        min_size=1,
        max_size=300,
    )
)
def test_any_series_stays_broken_at_least_the_minimum_dwell(
    series: list[tuple[float, float]],
) -> None:
    gate, now, broke_at = LatencyGate(OBJECTIVE), 0.0, None
    for sample, gap in series:
        now += gap
        was = gate.broken
        gate.observe(None, sample, now)
        if gate.broken and not was:
            broke_at = now
        if was and not gate.broken:
            assert broke_at is not None and now - broke_at >= OBJECTIVE.min_dwell_s


def _config(tmp_path: Path, upstream: RunningUpstream, latency: dict[str, Any]) -> Any:
    models = [
        {
            "name": name,
            "model": f"openai/{upstream_id}",
            "api_base": upstream.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "price": {"input_per_mtok": "1", "output_per_mtok": "2"},
        }
        for name, upstream_id in (("steady", "lat-steady"), ("backup", "lat-backup"))
    ]
    policy = {
        "tiers": [
            {"name": "quick", "deployments": ["steady"], "latency": latency},
            {"name": "careful", "deployments": ["backup"], "min_demand": 0.5},
        ]
    }
    return gateway_config(
        f"sqlite:///{tmp_path / 'gw.db'}",
        upstream,
        models=models,
        policy=policy,
        router={"enabled": False},
    )


@pytest.fixture
async def gw(tmp_path: Path, upstream: RunningUpstream) -> Any:
    latency = {
        "total_p95_ms": 1000,
        "window": 10,
        "min_samples": 3,
        "recover_samples": 2,
        "min_dwell_s": 5,
        "probe_every_s": 10,
    }
    async with in_process_gateway(_config(tmp_path, upstream, latency)) as running:
        try:
            yield running
        finally:
            upstream.fake.delay_s.clear()


async def _ask(client: openai.AsyncOpenAI, gw: Any) -> tuple[str, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model="quick", messages=[{"role": "user", "content": "hello"}]
    )
    row = await gw.admin.spend(raw.headers["x-request-id"])
    return raw.headers["x-rightsize-model"], row["route_reason"]


async def test_a_slow_tier_is_avoided_then_returns_after_half_open_probes(
    gw: Any, upstream: RunningUpstream
) -> None:
    watch = gw.app.state.gateway.latency
    now = [0.0]
    watch.clock = lambda: now[0]
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, max_retries=0
    )
    for _ in range(3):
        assert (await _ask(client, gw))[0] == "steady"
    upstream.fake.delay_s["lat-steady"] = 1.5  # over the 1000 ms objective
    assert (await _ask(client, gw))[0] == "steady"  # the slow answer that breaks it
    served, reason = await _ask(client, gw)
    assert served == "backup"
    assert "'steady' breaks its latency objective: p95 total" in reason
    samples = await scrape(gw)
    assert total(samples, "rightsize_deployment_latency_objective_broken", deployment="steady")
    upstream.fake.delay_s.clear()  # fast again, but nothing goes there to show it
    for _ in range(3):
        assert (await _ask(client, gw))[0] == "backup"
    now[0] = 10.0
    served, reason = await _ask(client, gw)
    assert (served, "half-open probe of 'steady'" in reason) == ("steady", True)
    assert (await _ask(client, gw))[0] == "backup"  # one probe per probe_every_s
    now[0] = 20.0
    assert (await _ask(client, gw))[0] == "steady"  # the second fast probe: recovered
    served, reason = await _ask(client, gw)
    assert served == "steady" and "latency" not in reason
    samples = await scrape(gw)
    assert not total(samples, "rightsize_deployment_latency_objective_broken", deployment="steady")


async def test_a_batch_request_is_not_moved_off_a_slow_deployment(
    gw: Any, upstream: RunningUpstream
) -> None:
    watch = gw.app.state.gateway.latency
    watch.clock = lambda: 0.0
    upstream.fake.delay_s["lat-steady"] = 1.5
    for _ in range(3):
        await gw.client.post(
            "/v1/chat/completions",
            json={"model": "quick", "messages": [{"role": "user", "content": "hi"}]},
            headers=gw.auth,
        )
    upstream.fake.delay_s.clear()
    interactive = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "quick", "messages": [{"role": "user", "content": "hi"}]},
        headers=gw.auth,
    )
    batch = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "quick", "messages": [{"role": "user", "content": "hi"}]},
        headers={**gw.auth, "x-rightsize-latency": "batch"},
    )
    assert interactive.headers["x-rightsize-model"] == "backup"
    assert batch.headers["x-rightsize-model"] == "steady"


async def test_a_stream_slow_to_its_first_chunk_breaks_a_ttft_objective(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    latency = {"ttft_p95_ms": 1000, "window": 5, "min_samples": 1, "recover_samples": 1}
    async with in_process_gateway(_config(tmp_path, upstream, latency)) as gw:
        client = openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, max_retries=0
        )
        upstream.fake.delay_s["lat-steady"] = 1.5
        try:
            stream = await client.chat.completions.create(
                model="quick", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert [c async for c in stream]
        finally:
            upstream.fake.delay_s.clear()
        served, reason = await _ask(client, gw)
    assert served == "backup"
    assert "p95 time to first token" in reason
