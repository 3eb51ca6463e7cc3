"""At start, each configured api_base is tried once in the background: one that does not answer
is a warning naming its deployments, and the gateway serves meanwhile."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.upstreams import REACHABILITY_TIMEOUT_S, check_reachability, endpoint_of
from policies import Capabilities, Deployment
from policies.catalog import FREE
from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream, free_port


def deployment(name: str, api_base: str | None) -> Deployment:
    return Deployment(
        name=name,
        model="openai/fake-ok",
        api_base=api_base,
        api_key_env=None,
        tier=None,
        transport="openai_http",
        timeout_s=5,
        price=FREE,
        capabilities=Capabilities(),
        local=True,
    )


async def test_an_unreachable_upstream_is_a_warning_and_the_gateway_serves_meanwhile(
    tmp_path: Path, upstream: RunningUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    config["models"].append(
        {"name": "gone", "model": "openai/fake-ok", "api_base": dead, "local": True}
    )
    caplog.set_level(logging.WARNING, logger="rightsize.upstreams")
    async with in_process_gateway(config) as gw:
        assert (await gw.client.get("/healthz")).status_code == 200
        for _ in range(100):
            if any("not reachable" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    warnings = [r.getMessage() for r in caplog.records if r.name == "rightsize.upstreams"]
    assert len(warnings) == 1, warnings  # the fake upstream, which answers, is not warned of
    assert f"upstream {dead} (deployments 'gone')" in warnings[0]
    assert "ConnectionRefusedError" in warnings[0]


async def test_deployments_sharing_an_address_are_tried_once_and_named_together() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    warnings = await check_reachability(
        [deployment("a", dead + "/v1"), deployment("b", dead + "/v2"), deployment("c", None)]
    )
    assert len(warnings) == 1 and "(deployments 'a', 'b')" in warnings[0]


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A loopback port whose connections hang: its accept queue is full and never served, so
    the kernel drops new handshakes (a firewall that drops packets, without the network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for sock in (*fillers, server):
            sock.close()


async def test_the_check_gives_up_within_its_time_limit(hanging_port: int) -> None:
    started = time.monotonic()
    far = deployment("far", f"http://127.0.0.1:{hanging_port}/v1")
    warnings = await check_reachability([far], timeout_s=0.5)
    assert 0.4 < time.monotonic() - started < 2
    assert len(warnings) == 1 and "'far'" in warnings[0]
    assert "no connection within 0.5s" in warnings[0]


async def test_a_hanging_upstream_does_not_hold_up_the_start(
    tmp_path: Path,
    upstream: RunningUpstream,
    hanging_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    config["models"].append(
        {
            "name": "far",
            "model": "openai/fake-ok",
            "api_base": f"http://127.0.0.1:{hanging_port}/v1",
            "local": True,
        }
    )
    caplog.set_level(logging.WARNING, logger="rightsize.upstreams")
    async with in_process_gateway(config) as gw:
        # Served while the check still waits on its connection: it runs beside the app.
        assert (await gw.client.get("/healthz")).status_code == 200
        assert not [r for r in caplog.records if r.name == "rightsize.upstreams"]
        for _ in range(int(REACHABILITY_TIMEOUT_S * 20) + 40):
            if any(r.name == "rightsize.upstreams" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "rightsize.upstreams"]
    assert f"no connection within {REACHABILITY_TIMEOUT_S:g}s" in warning


def test_an_api_base_is_named_without_its_credentials_or_query() -> None:
    named = endpoint_of(deployment("x", "https://user:secret@llm.example.com:8443/v1?key=k"))
    assert named == "https://llm.example.com:8443/v1"
    assert endpoint_of(deployment("y", None)) == "openai's default api_base (litellm)"
