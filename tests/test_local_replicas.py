"""Replicas: one stopped mid-run leaves rotation in the configured time with no client-visible
error and comes back after a restart; the probe loop is one per process, bounded, and ends
with the app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from local_backend import LocalBackend, LocalBackendSettings, ProbeLoop
from policies import ModelInfo
from tests.conftest import in_process_gateway
from tests.fake_engine import EngineState, RunningEngine
from tests.fake_upstream import RunningUpstream
from tests.local_support import ask, local_config, sdk, until

INTERVAL_S, UNHEALTHY_AFTER, TIMEOUT_S = 0.1, 2, 0.3
# The configured time to leave rotation: the failed probes in a row, each at most its timeout
# after its round began.
OUT_WITHIN_S = INTERVAL_S * UNHEALTHY_AFTER + TIMEOUT_S
PROBES = {
    "probe_interval_s": INTERVAL_S,
    "probe_timeout_s": TIMEOUT_S,
    "unhealthy_after": UNHEALTHY_AFTER,
    "breaker_failures": 3,
    "breaker_open_s": 0.5,
}


async def test_a_replica_stopped_mid_run_leaves_rotation_without_client_errors_and_returns(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    first = RunningEngine(EngineState("first")).start()
    second = RunningEngine(EngineState("second")).start()
    try:
        config = local_config(
            tmp_path, upstream, "vllm", [first.base_url, second.base_url], **PROBES
        )
        async with in_process_gateway(config) as gw:
            local = gw.app.state.gateway.local
            client = sdk(gw)
            answers: list[str] = []
            errors: list[BaseException] = []
            running = True

            async def caller(n: int) -> None:
                while running:
                    try:
                        served, text, _ = await ask(client, f"question {n} {len(answers)}")
                    except openai.APIError as exc:  # what a client would see
                        errors.append(exc)
                        continue
                    answers.append(text if served == "gpu" else "fallback")
                    await asyncio.sleep(0.005)

            callers = [asyncio.create_task(caller(n)) for n in range(4)]
            await until(lambda: len(answers) >= 20)
            assert {"served by first", "served by second"} <= set(answers)

            await asyncio.to_thread(second.stop)  # mid-run, requests in flight
            stopped = second_replica = local.replicas("gpu")[1]
            took = await until(lambda: not local.healthy(stopped), timeout_s=5)
            assert took <= OUT_WITHIN_S + 0.5, f"left rotation after {took:.2f} s"
            served_before = len(answers)
            await until(lambda: len(answers) >= served_before + 20)
            after_out = answers[served_before:]
            assert "served by second" not in after_out

            await asyncio.to_thread(second.start)  # the same port again
            await until(lambda: local.healthy(second_replica), timeout_s=5)
            back = len(answers)
            await until(lambda: "served by second" in answers[back:], timeout_s=5)
            running = False
            await asyncio.gather(*callers)
            assert errors == [], errors[:3]
            assert len(second.state.bodies) > 0
    finally:
        first.stop()
        second.stop()


async def test_requests_not_yet_started_go_to_the_fallback_when_every_replica_is_down(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    engine = RunningEngine(EngineState("only")).start()
    config = local_config(tmp_path, upstream, "vllm", [engine.base_url], **PROBES)
    async with in_process_gateway(config) as gw:
        client = sdk(gw)
        assert (await ask(client))[0] == "gpu"
        await asyncio.to_thread(engine.stop)
        # Before the probes notice: the call fails over to the next tier inside the gateway.
        served, _, request_id = await ask(client)
        assert served == "cloud"
        row = await gw.admin.spend(request_id)
        assert "-> fallback 'cloud'" in row["route_reason"] and row["attempts"] == 2
        local = gw.app.state.gateway.local
        await until(lambda: not local.states()["gpu"].healthy)
        served, _, request_id = await ask(client)
        assert served == "cloud"
        row = await gw.admin.spend(request_id)
        assert row["attempts"] == 1  # out of rotation: dropped before any attempt


async def test_the_probe_loop_is_cancelled_at_shutdown(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    with RunningEngine(EngineState("engine")) as engine:
        config = local_config(tmp_path, upstream, "vllm", [engine.base_url], **PROBES)
        async with in_process_gateway(config) as gw:
            probes = gw.app.state.probes
            await until(lambda: probes.rounds >= 2)
            assert probes.running
            with pytest.raises(RuntimeError, match="already started"):
                probes.start()  # one loop per process
            named = [t for t in asyncio.all_tasks() if t.get_name() == "rightsize-local-probes"]
            assert len(named) == 1
        assert not probes.running
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "rightsize-local-probes"]
        rounds = probes.rounds
        await asyncio.sleep(3 * INTERVAL_S)
        assert probes.rounds == rounds


async def test_no_probe_loop_without_local_engines(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    from tests.conftest import gateway_config

    async with in_process_gateway(
        gateway_config(f"sqlite:///{tmp_path / 'gw.db'}", upstream)
    ) as gw:
        assert gw.app.state.probes is None and gw.app.state.gateway.local is None


async def test_probes_in_flight_never_exceed_the_bound() -> None:
    from policies import Catalog, ModelSpec

    shared = EngineState("slow", health_delay_s=0.2)
    engines = [RunningEngine(shared).start() for _ in range(6)]
    try:
        spec = ModelSpec.model_validate(
            {
                "name": "gpu",
                "model": "openai/local-model",
                "engine": "vllm",
                "replicas": [e.base_url for e in engines],
            }
        )
        catalog = Catalog.build([spec], lambda _: ModelInfo(price=None))
        settings = LocalBackendSettings(max_concurrent_probes=2, probe_timeout_s=2)
        probes = ProbeLoop(LocalBackend(catalog.deployments, settings))
        await probes.probe_all()
        await probes.aclose()
        assert shared.max_probes_in_flight == 2
    finally:
        for engine in engines:
            engine.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_dead_replica_is_skipped_before_the_probes_notice_and_its_breaker_opens(
    stream: bool, upstream: RunningUpstream, tmp_path: Path
) -> None:
    first = RunningEngine(EngineState("first")).start()
    second = RunningEngine(EngineState("second")).start()
    try:
        # Probes far apart: only the gateway's own calls can notice the dead replica.
        slow_probes = {**PROBES, "probe_interval_s": 60, "breaker_open_s": 60}
        config = local_config(
            tmp_path, upstream, "vllm", [first.base_url, second.base_url], **slow_probes
        )
        async with in_process_gateway(config) as gw:
            local = gw.app.state.gateway.local
            client = sdk(gw)
            first.stop()
            for n in range(6):
                messages = [{"role": "user", "content": f"question {n}"}]
                if stream:
                    chunks = await client.chat.completions.create(
                        model="local",
                        messages=messages,
                        stream=True,  # type: ignore[arg-type]
                    )
                    text = "".join(
                        [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                    )
                else:
                    text = (await ask(client, f"question {n}"))[1]
                assert text == "served by second"
            dead = local.replicas("gpu")[0]
            assert not local.healthy(dead) and dead.upstream_failures >= 3
    finally:
        first.stop()
        second.stop()
