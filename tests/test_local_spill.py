"""Spill-over against engines serving vLLM's and SGLang's metrics: queue up, new requests go
remote; down past the lower threshold, they come back; stale metrics are not idle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_process_gateway
from tests.fake_engine import EngineState, RunningEngine
from tests.fake_upstream import RunningUpstream
from tests.local_support import ask, local_config, sdk, until

PROBES = {
    "probe_interval_s": 0.05,
    "probe_timeout_s": 0.5,
    "stale_after_s": 0.5,
    "spill": {"queue_high": 8, "queue_low": 2, "kv_high": 0.95, "kv_low": 0.85},
}


@pytest.fixture(params=["vllm", "sglang"])
def engine(request: pytest.FixtureRequest) -> Iterator[RunningEngine]:
    with RunningEngine(EngineState("engine", engine=request.param)) as running:
        yield running


async def test_queue_past_the_threshold_spills_to_the_remote_tier_and_comes_back_below_the_lower(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    kind = engine.state.engine
    config = local_config(tmp_path, upstream, kind, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        local = gw.app.state.gateway.local
        client = sdk(gw)
        await until(lambda: local.replicas("gpu")[0].reading is not None)
        served, text, _ = await ask(client)
        assert (served, text) == ("gpu", "served by engine")

        engine.state.waiting = 20
        await until(lambda: local.states()["gpu"].spill is not None)
        served, _, request_id = await ask(client)
        assert served == "cloud"
        row = await gw.admin.spend(request_id)
        why = f"spill: 'gpu' queue 20 >= queue_high 8 ({kind} metrics)"
        assert why in row["route_reason"]
        assert "spilled in tier 'local': next tier 'remote'" in row["route_reason"]

        # Between the thresholds: still remote (hysteresis), however many probe rounds pass.
        engine.state.waiting = 5
        rounds = gw.app.state.probes.rounds
        await until(lambda: gw.app.state.probes.rounds >= rounds + 3)
        assert (await ask(client))[0] == "cloud"

        engine.state.waiting = 1
        await until(lambda: local.states()["gpu"].spill is None)
        assert (await ask(client))[0] == "gpu"


async def test_metrics_show_each_engines_probed_load_health_and_spill(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    from tests.test_metrics import parse, total

    config = local_config(tmp_path, upstream, engine.state.engine, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        local = gw.app.state.gateway.local
        engine.state.waiting, engine.state.kv = 20, 0.5
        await until(lambda: local.states()["gpu"].spill is not None)

        response = await gw.client.get("/metrics", headers=gw.admin.headers)
        samples = parse(response.text)

        labels = {"deployment": "gpu", "replica": engine.base_url}
        assert total(samples, "rightsize_local_engine_requests_waiting", **labels) == 20
        assert total(samples, "rightsize_local_engine_kv_cache_usage_ratio", **labels) == 0.5
        assert total(samples, "rightsize_local_engine_replica_healthy", **labels) == 1
        assert total(samples, "rightsize_local_engine_spilled", deployment="gpu") == 1
        age = total(samples, "rightsize_local_engine_reading_age_seconds", **labels)
        assert 0 <= age < PROBES["stale_after_s"]


async def test_the_admin_api_lists_each_replicas_probed_load_for_the_admin_page(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = local_config(tmp_path, upstream, engine.state.engine, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        local = gw.app.state.gateway.local
        engine.state.waiting, engine.state.kv = 3, 0.25
        await until(lambda: (r := local.replicas("gpu")[0].reading) and r.load.waiting == 3)

        response = await gw.client.get("/admin/local-engines", headers=gw.admin.headers)

        (replica,) = response.json()["data"]
        assert (replica["deployment"], replica["replica"]) == ("gpu", engine.base_url)
        assert (replica["healthy"], replica["spilled"]) == (True, False)
        assert (replica["waiting"], replica["kv_cache_usage"]) == (3, 0.25)
        assert 0 <= replica["reading_age_s"] < PROBES["stale_after_s"]


async def test_kv_cache_past_its_threshold_spills(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = local_config(tmp_path, upstream, engine.state.engine, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        local = gw.app.state.gateway.local
        engine.state.kv = 0.97
        await until(lambda: local.states()["gpu"].spill is not None)
        assert (await ask(sdk(gw)))[0] == "cloud"


async def test_stale_metrics_keep_a_spilled_engine_spilled_not_idle(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = local_config(tmp_path, upstream, engine.state.engine, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        local = gw.app.state.gateway.local
        engine.state.waiting = 30
        await until(lambda: local.states()["gpu"].spill is not None)
        # The queue drains but the metrics endpoint breaks: nothing says it drained.
        engine.state.waiting = 0
        engine.state.metrics_status = 500
        await until(lambda: (local.states()["gpu"].age_s or 0) > 0.6)
        assert local.states()["gpu"].spill is not None
        assert (await ask(sdk(gw)))[0] == "cloud"
        engine.state.metrics_status = 200
        await until(lambda: local.states()["gpu"].spill is None)
        assert (await ask(sdk(gw)))[0] == "gpu"


async def test_streamed_requests_are_served_by_the_engine_with_its_usage(
    engine: RunningEngine, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = local_config(tmp_path, upstream, engine.state.engine, [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        stream = await sdk(gw).chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "served by engine"
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 3)


@pytest.mark.parametrize("hint", [True, False])
async def test_priority_hint_sends_vllm_the_predicted_length_bucket_only_when_enabled(
    hint: bool, upstream: RunningUpstream, tmp_path: Path
) -> None:
    with RunningEngine(EngineState("engine", engine="vllm")) as engine:
        config = local_config(
            tmp_path, upstream, "vllm", [engine.base_url], priority_hint=hint, **PROBES
        )
        config["router"] = {"enabled": True}
        async with in_process_gateway(config) as gw:
            raw = await sdk(gw).chat.completions.with_raw_response.create(
                model="local", messages=[{"role": "user", "content": "Say hi."}]
            )
            p50 = int(raw.headers["x-rightsize-token-budget"].split("/")[0])
            body = engine.state.bodies[-1]
            if hint:
                assert body["priority"] == p50 // 128
            else:
                assert "priority" not in body
