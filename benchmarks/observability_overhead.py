"""What metrics, the JSON request line and OpenTelemetry traces add to a whole request.

    python benchmarks/observability_overhead.py [--requests 300] [--rounds 6]

Four apps in one process against the fake upstream (tests/fake_upstream.py, on loopback),
a pinned model, router off, SQLite: everything off; `/metrics` on; metrics and the JSON
request line on (formatted into a discarded stream); traces on (the SDK with a batch processor
into an exporter that drops the spans). The cases take turns, `--requests` sequential requests
each per round, so that load on a shared host touches them alike. Prints the p50 of the
client's wall time and of `x-rightsize-overhead-ms` per case. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.request_log import JsonFormatter  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.conftest import Admin, gateway_config, gateway_env  # noqa: E402
from tests.fake_upstream import RunningUpstream  # noqa: E402

BODY = {"model": "direct", "messages": [{"role": "user", "content": "Say hello in one word."}]}
CASES = ("all off", "metrics", "metrics + JSON log", "traces")


def _discarding_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


async def _client(
    stack: AsyncExitStack, case: str, upstream: RunningUpstream, directory: Path
) -> tuple[httpx.AsyncClient, dict[str, str]]:
    config = gateway_config(f"sqlite:///{directory / 'rs.db'}", upstream, router={"enabled": False})
    config["cache"] = {"enabled": False}
    config["server"] = {
        "metrics": case != "all off" and case != "traces",
        "log_format": "json" if "JSON" in case else "text",
    }
    provider = _discarding_provider() if case == "traces" else None
    app = create_app(
        Settings.model_validate(config), environ=gateway_env(), tracer_provider=provider
    )
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30)
    )
    admin = Admin(client)
    await admin.team("search")
    key = (await admin.key("search"))["key"]
    return client, {"authorization": f"Bearer {key}"}


async def _run(requests: int, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in CASES}
    with RunningUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            clients = {}
            for case in CASES:
                directory = Path(tmp) / case.replace(" ", "_").replace("+", "")
                directory.mkdir()
                clients[case] = await _client(stack, case, upstream, directory)
            for _ in range(rounds):
                for case in CASES:
                    client, auth = clients[case]
                    _json_log(on="JSON" in case)
                    walls, overheads = results[case]
                    for _ in range(requests):
                        started = time.perf_counter()
                        response = await client.post(
                            "/v1/chat/completions", json=BODY, headers=auth
                        )
                        walls.append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200, response.text
                        overheads.append(float(response.headers["x-rightsize-overhead-ms"]))
    return results


def _json_log(*, on: bool) -> None:
    """The request line formatted as `server.log_format: json` does, into a discarded stream."""
    logger = logging.getLogger("rightsize.requests")
    logger.handlers.clear()
    logger.propagate = not on
    if on:
        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(_run(args.requests, args.rounds))
    base_wall = statistics.median(results["all off"][0])
    base_over = statistics.median(results["all off"][1])
    print(f"{'case':<20} {'wall p50 ms':>12} {'added':>8} {'overhead p50 ms':>16} {'added':>8}")
    for case in CASES:
        wall, over = (statistics.median(v) for v in results[case])
        print(
            f"{case:<20} {wall:>12.3f} {wall - base_wall:>+8.3f} "
            f"{over:>16.3f} {over - base_over:>+8.3f}"
        )


if __name__ == "__main__":
    main()
