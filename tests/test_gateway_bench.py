"""The gateway benchmark's own arithmetic: the load generator's timing and the report's figures.

Against a tiny local server that answers one request at a time in 20 ms: a closed-loop client
sees 20 ms per request, an open-loop one sees the queue its schedule builds up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.bench_report import LOADS, Cell, percentile, plot_added_latency, results_table
from benchmarks.loadgen import LoadResult, LoadSpec, generate, parse_response

SERVICE_S = 0.020


class SerialServer:
    """HTTP/1.1 keep-alive server answering one request at a time, SERVICE_S each."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = asyncio.Lock()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.bodies.append(await reader.readexactly(length))
                async with self._lock:
                    await asyncio.sleep(SERVICE_S)
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nx-rightsize-cache: hit\r\n"
                    + b"content-length: %d\r\n\r\n" % len(body)
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[SerialServer]:
    serial = SerialServer()
    listening = await asyncio.start_server(serial.handle, "127.0.0.1", 0)
    serial.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield serial


def spec(port: int, **load: object) -> LoadSpec:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    fields: dict = {"duration_s": 0.2, "warmup_s": 0.0, "drain_s": 5.0, **load}
    return LoadSpec(port=port, path="/v1/chat/completions", body=body, **fields)


async def test_closed_loop_times_each_answer_from_its_own_send(server: SerialServer) -> None:
    result = await generate(spec(server.port, mode="closed", concurrency=1))
    assert 5 <= len(result.latencies_ms) <= 12  # 0.2 s of 20 ms answers
    assert all(SERVICE_S * 1000 <= latency < 60 for latency in result.latencies_ms)
    assert result.cache == {"hit": len(result.latencies_ms)}
    assert not result.errors


async def test_open_loop_charges_the_queue_from_the_scheduled_send(server: SerialServer) -> None:
    # 100/s for 0.2 s on one connection to a server that takes 20 ms each: request i is due
    # at 10*i ms and answered at about 20*(i+1) ms, so the last of 20 waits about 210 ms.
    # Timed from its actual send (once the connection is free) each would look like 20 ms:
    # the coordinated omission the schedule is there to avoid.
    result = await generate(spec(server.port, mode="open", rate=100, max_connections=1))
    assert len(result.latencies_ms) == 20
    assert max(result.latencies_ms) >= 180
    assert percentile(result.latencies_ms, 0.5) >= 90
    assert len(result.send_lag_ms) == 20
    assert not result.errors


async def test_unique_prompts_send_a_new_prompt_every_request(server: SerialServer) -> None:
    await generate(spec(server.port, mode="open", rate=100, unique_prompts=True))
    assert len(server.bodies) == 21  # one warm-up request, 20 timed ones
    assert len(set(server.bodies)) == 21
    same = SerialServer()
    listening = await asyncio.start_server(same.handle, "127.0.0.1", 0)
    async with listening:
        await generate(spec(listening.sockets[0].getsockname()[1], mode="open", rate=100))
    assert len(set(same.bodies)) == 1


def test_a_response_is_complete_only_when_its_whole_body_has_arrived() -> None:
    plain = b"HTTP/1.1 200 OK\r\nx-rightsize-cache: miss\r\ncontent-length: 5\r\n\r\nhello"
    assert parse_response(plain[:-1]) is None
    reply, consumed = parse_response(plain + b"HTTP/1.1 200") or (None, 0)
    assert reply is not None and (reply.status, reply.cache, consumed) == (200, "miss", len(plain))

    chunked = b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert parse_response(chunked[:-2]) is None
    reply, consumed = parse_response(chunked) or (None, 0)
    assert reply is not None and (reply.status, consumed) == (429, len(chunked))


def test_result_survives_the_trip_between_processes() -> None:
    result = LoadResult(latencies_ms=[1.5, 2.5], window_s=1.0)
    result.errors["http 429"] += 2
    result.cache["hit"] += 2
    again = LoadResult.from_json(result.to_json())
    assert again == result


def cell(latencies: list[float], window_s: float = 1.0) -> Cell:
    filled = Cell()
    filled.add(LoadResult(latencies_ms=latencies, window_s=window_s), None)
    return filled


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )


def test_added_latency_is_the_cells_percentile_minus_the_floors() -> None:
    load = LOADS[0]
    cells = {
        ("floor", load.name): cell([1.0] * 99 + [3.0]),
        ("gw", load.name): cell([2.5] * 99 + [10.0], window_s=2.0),
    }
    table = results_table(cells, ["floor", "gw"], "floor", [load])
    row = next(line for line in table.splitlines() if line.startswith("| gw "))
    # req/s 100/2 s; p50 2.5, p90 2.5, p99 2.5 (nearest rank: 99th of 100); added 1.5 and 1.5
    assert row.startswith("| gw | c=1 | 50 | 2.50 | 2.50 | 2.50 | 1.50 | 1.50 | 0 |")


def test_the_plot_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    paced = [load for load in LOADS if load.mode == "open"]
    cells = {(name, load.name): cell([1.0, 2.0]) for name in ("floor", "gw") for load in paced}
    plot_added_latency(cells, ["floor", "gw"], "floor", paced, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_issue_targets_are_read_from_the_cells_they_name() -> None:
    from benchmarks.gateway_bench import _issue_targets

    cells = {
        ("floor", "c=1"): cell([1.0] * 10),
        ("rs-main", "c=1"): cell([3.0] * 10),  # added p50 2.0: over 1.5
        ("floor", "c=32"): cell([1.0] * 10),
        ("rs-main", "c=32"): cell([1.0] * 600),  # 600 req/s
        ("litellm-proxy", "c=32"): cell([1.0] * 50),  # 50 req/s: 12x
    }
    rows = _issue_targets(cells).splitlines()
    assert "| rs-main, c=1 | ≤ 1.5 | 2.00 | no |" in rows[2]
    assert "| rs-main, c=32 | ≥ 10 | 12.00 | yes |" in rows[3]
    assert len(rows) == 4  # targets whose cells did not run are left out
