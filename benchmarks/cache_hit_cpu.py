"""CPU per exact in-process cache hit inside the app: no HTTP server, no client.

    python benchmarks/cache_hit_cpu.py [--hits 4000] [--profile 40] [--lookup-only]

Builds the app in this process (the three-tier `auto` configuration of benchmarks/bench_stack.py,
router on, in-process cache) against the fake upstream, primes the cache with one
temperature-0 request, then sends N identical requests straight to the ASGI app and reads this
process's CPU time around them: the gateway's own work per hit, without uvicorn's and the
client's. `--profile N` runs them under cProfile and prints the N largest by cumulative and by
own time. `--lookup-only` times `PromptCache.lookup` of a hit and its entry's usage alone (best
and median of 9 repeats). Run it with PYTHONPATH set to another source tree to compare trees.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

# The tree whose gateway is measured: PYTHONPATH's first entry (another checkout), else this one.
ROOT = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or Path(__file__).parent.parent)
sys.path.insert(0, str(ROOT.resolve()))

from benchmarks import bench_stack as stack  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

PROMPT = "Summarise in one sentence why the sky is blue."
BODY = orjson.dumps(
    {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": PROMPT}]}
)
COMPLETION = {
    "id": "chatcmpl-fake",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-ok",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the fake upstream."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
}


async def lookup_only() -> None:
    from gateway.cache import PromptCache
    from gateway.cache.config import CacheSettings
    from gateway.schemas import ChatRequest

    cache = PromptCache.build(CacheSettings.model_validate({"backend": "memory"}), None)
    chat = ChatRequest.from_body(orjson.loads(BODY))
    await cache.store(await cache.lookup("bench", "auto", chat, {}), "light", COMPLETION)
    rounds = []
    for _ in range(9):
        started = time.perf_counter()
        for _ in range(3000):
            hit = await cache.lookup("bench", "auto", chat, {})
            assert hit.answer is not None
            hit.answer.usage  # noqa: B018 (read as _from_cache reads it)
        rounds.append((time.perf_counter() - started) / 3000 * 1e6)
    print(
        f"lookup + usage per hit: best {min(rounds):.2f} us, median "
        f"{statistics.median(rounds):.2f} us; load {os.getloadavg()[0]:.2f}"
    )


async def hits(port: int, total: int, profile: int) -> None:
    from gateway.app import create_app
    from gateway.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="rightsize-hit-cpu-"))
    config = stack.rightsize_config(
        workdir, port, transport="openai_http", router=True, redis_url=None, redis_prefix="x:"
    )
    app = create_app(Settings.model_validate(config))
    async with app.router.lifespan_context(app):
        key = await _prime(app)
        one = _request(app, key)
        for _ in range(300):  # warm
            await one()
        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for _ in range(total):
            await one()
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"{total} hits: CPU {cpu / total * 1000:.3f} ms/hit, wall "
            f"{wall / total * 1000:.3f} ms/hit; load {os.getloadavg()[0]:.2f}"
        )
        if profiler is not None:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(profile)
            stats.sort_stats("tottime").print_stats(profile)


def with_upstream(total: int, profile: int) -> None:
    """The fake upstream in its own process for the priming miss, then the hits."""
    os.environ.update(RIGHTSIZE_MASTER_KEY=stack.MASTER_KEY, RIGHTSIZE_KEY_SECRET=stack.MASTER_KEY)
    os.environ[stack.UPSTREAM_KEY_ENV] = "fake"
    port = free_port()
    command = [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)]
    upstream = subprocess.Popen(command, cwd=ROOT)
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/_requests", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        asyncio.run(hits(port, total, profile))
    finally:
        upstream.terminate()
        upstream.wait(timeout=15)


async def _prime(app: Any) -> str:
    """A team and key, and the one miss that stores the answer; the key."""
    admin = {"authorization": f"Bearer {stack.MASTER_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        (
            await client.post("/admin/teams", json={"name": "bench"}, headers=admin)
        ).raise_for_status()
        key = (await client.post("/admin/keys", json={"team": "bench"}, headers=admin)).json()[
            "key"
        ]
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        answer = await client.post("/v1/chat/completions", content=BODY, headers=headers)
        answer.raise_for_status()
    await asyncio.sleep(0.3)  # the store runs after the response
    return str(key)


def _request(app: Any, key: str) -> Any:
    """One POST straight to the ASGI app; raises unless it was answered from the cache."""
    headers = [
        (b"host", b"gw"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("gw", 80),
    }

    async def one() -> None:
        sent = False
        started: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)

        await app(dict(scope), receive, send)
        if started.get("status") != 200 or (b"x-rightsize-cache", b"hit") not in started["headers"]:
            raise SystemExit(f"not a cache hit: {started}")

    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=4000)
    parser.add_argument("--profile", type=int, default=0, help="print this many cProfile rows")
    parser.add_argument("--lookup-only", action="store_true")
    args = parser.parse_args()
    if args.lookup_only:
        asyncio.run(lookup_only())
    else:
        with_upstream(args.hits, args.profile)


if __name__ == "__main__":
    main()
