"""The serving event loop's stalls under paced load: loop lag, GC pauses, and cache bypasses.

Starts the fake upstream and `rightsize serve` (one worker, SQLite store, router on) with a
sampler inside the gateway process: a task that sleeps 2 ms at a time on the serving loop and
records how late it wakes (the loop lag every request in flight also waits), and a GC callback
timing each collection. Then sends requests open-loop at a fixed rate (latency measured from
each request's scheduled send, so a stalled gateway cannot slow the sender down) and prints one
markdown row.

    python benchmarks/loop_lag.py [--rate 100] [--seconds 20] [--mode new-prompts|cache-hits]
        [--redis redis://127.0.0.1:6379/0] [--redis-timeout-ms MS] [--unfreeze] [--label TEXT]

--mode cache-hits cycles over 50 prompts stored in the cache first (temperature 0), and with
--redis the cache is on Redis; the row then counts the lookups that bypassed it, by reason
(`GET /admin/cache`). --unfreeze undoes `serve`'s gc.freeze() (to measure what it buys).
Run the gateway of another checkout by pointing PYTHONPATH at it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parent
# Appended: PYTHONPATH, not this file's checkout, decides which gateway the child runs.
sys.path.append(str(ROOT.parent))

from tests.fake_upstream import free_port  # noqa: E402

_SAMPLE_S = 0.002
_LAG_PATH = "/_loop_lag"
_HIT_PROMPTS = 50


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# In the gateway process.


class _Sampled:
    """The app, plus the sampler; `GET /_loop_lag` answers what it saw."""

    def __init__(self, app: Any, unfreeze: bool) -> None:
        self.app = app
        self._unfreeze = unfreeze
        self._task: asyncio.Task[None] | None = None
        self._lags: list[float] = []
        self._gc: dict[str, list[float]] = {"0": [], "1": [], "2": []}
        self._gc_started = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._task is None:
            if self._unfreeze:
                gc.unfreeze()
            gc.callbacks.append(self._on_gc)
            self._task = asyncio.create_task(self._sample())
        if scope["type"] == "http" and scope["path"] == _LAG_PATH:
            seen = {"lags_ms": self._lags, "gc_ms": self._gc, "redis_get_ms": _REDIS_GET_MS}
            body = orjson.dumps(seen)
            self._lags, self._gc = [], {"0": [], "1": [], "2": []}
            _REDIS_GET_MS.clear()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    async def _sample(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(_SAMPLE_S)
            self._lags.append((time.perf_counter() - started - _SAMPLE_S) * 1000)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause = (time.perf_counter() - self._gc_started) * 1000
            self._gc[str(info["generation"])].append(pause)


_REDIS_GET_MS: list[float] = []


def _time_redis_gets() -> None:
    """Time every cache GET on Redis, the ones cut at their deadline included."""
    from gateway.cache.stores import RedisStore

    get = RedisStore.get

    async def timed(self: RedisStore, team: str, key: str) -> bytes | None:
        started = time.perf_counter()
        try:
            return await get(self, team, key)
        finally:
            _REDIS_GET_MS.append((time.perf_counter() - started) * 1000)

    RedisStore.get = timed  # type: ignore[method-assign]


def _serve_sampled(argv: list[str], unfreeze: bool) -> None:
    import gateway.app
    from gateway.cli.commands import main

    _time_redis_gets()

    build = gateway.app.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        return _Sampled(build(*args, **kwargs), unfreeze)

    gateway.app.create_app = create_app  # type: ignore[assignment]  # serve imports it late
    sys.argv = ["rightsize", *argv]
    sys.exit(main())


# In the load generator.


def _config(
    workdir: Path, up_port: int, redis: str | None, timeout_ms: float | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "store": {"url": f"sqlite:///{workdir / 'bench.db'}"},
        "models": [
            {
                "name": "pinned",
                "model": "openai/fake-ok",
                "api_base": f"http://127.0.0.1:{up_port}/v1",
                "transport": "openai_http",
                "local": True,
            }
        ],
        "cache": {"key_prefix": f"rightsize-bench:{uuid.uuid4().hex[:8]}:"},
    }
    if timeout_ms is not None:
        config["cache"]["redis_timeout_ms"] = timeout_ms
    if redis:
        config["store"]["redis_url"] = redis
    return config


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process for {url} exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not start")


def _body(i: int, mode: str) -> bytes:
    if mode == "cache-hits":
        prompt = f"Cached question number {i % _HIT_PROMPTS}: say hello in one word."
        return orjson.dumps(
            {"model": "pinned", "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        )
    prompt = f"Request {i} ({uuid.uuid4().hex[:8]}): explain briefly why the sky is blue."
    return orjson.dumps({"model": "pinned", "messages": [{"role": "user", "content": prompt}]})


async def _paced(
    url: str, headers: dict[str, str], rate: float, seconds: float, mode: str
) -> tuple[list[float], int, dict[str, int]]:
    latencies: list[float] = []
    failed = 0
    caches: dict[str, int] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for i in range(_HIT_PROMPTS if mode == "cache-hits" else 20):  # warm: store the answers
            await client.post(url + "/v1/chat/completions", content=_body(i, mode), headers=headers)
        await client.get(url + _LAG_PATH)  # forget the warm-up's samples

        async def one(i: int, due: float) -> None:
            nonlocal failed
            try:
                response = await client.post(
                    url + "/v1/chat/completions", content=_body(i, mode), headers=headers
                )
            except httpx.HTTPError:
                failed += 1
                return
            if response.status_code != 200:
                failed += 1
                return
            latencies.append((time.perf_counter() - due) * 1000)
            state = response.headers.get("x-rightsize-cache", "-")
            caches[state] = caches.get(state, 0) + 1

        start = time.perf_counter() + 0.1
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    return latencies, failed, caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--mode", default="new-prompts", choices=["new-prompts", "cache-hits"])
    parser.add_argument("--redis", default=None, help="Put the cache (and counters) on Redis.")
    parser.add_argument("--redis-timeout-ms", type=float, default=None, help="Default: serve's.")
    parser.add_argument("--unfreeze", action="store_true", help="Undo serve's gc.freeze().")
    parser.add_argument("--label", default="")
    parser.add_argument("--serve-sampled", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sampled is not None:
        _serve_sampled(args.serve_sampled, args.unfreeze)
        return

    up_port, gw_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rightsize-lag-"))
    (workdir / "bench.yaml").write_text(
        yaml.safe_dump(_config(workdir, up_port, args.redis, args.redis_timeout_ms))
    )
    env = {**os.environ, "RIGHTSIZE_MASTER_KEY": "bench", "RIGHTSIZE_KEY_SECRET": "bench"}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(up_port)], cwd=ROOT.parent
    )
    serve = ["serve", "--config", str(workdir / "bench.yaml"), "--port", str(gw_port)]
    sampled = [sys.executable, __file__, *(["--unfreeze"] if args.unfreeze else [])]
    gateway = subprocess.Popen(
        [*sampled, "--serve-sampled", *serve],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{up_port}/_requests", upstream)
        gw = f"http://127.0.0.1:{gw_port}"
        _wait(gw + "/healthz", gateway)
        admin = {"authorization": "Bearer bench"}
        httpx.post(gw + "/admin/teams", json={"name": "bench"}, headers=admin).raise_for_status()
        key = httpx.post(gw + "/admin/keys", json={"team": "bench"}, headers=admin).json()["key"]
        auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        before = httpx.get(gw + "/admin/cache", headers=admin).json()
        latencies, failed, caches = asyncio.run(
            _paced(gw, auth, args.rate, args.seconds, args.mode)
        )
        seen = httpx.get(gw + _LAG_PATH).json()
        after = httpx.get(gw + "/admin/cache", headers=admin).json()
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(timeout=30)
        upstream.wait(timeout=15)
    lags = seen["lags_ms"]
    pauses = seen["gc_ms"]
    bypassed = {
        reason: count - before["bypassed"].get(reason, 0)
        for reason, count in after["bypassed"].items()
        if count - before["bypassed"].get(reason, 0)
    }
    full = pauses["2"]
    gets = seen.get("redis_get_ms", [])
    redis_gets = (
        f"{percentile(gets, 0.5):.2f} / {percentile(gets, 0.99):.1f} / {max(gets):.0f}"
        if gets
        else "-"
    )
    print(
        f"| {args.label} | {args.rate:g} | {len(latencies)} | {failed} "
        f"| {percentile(latencies, 0.5):.1f} | {percentile(latencies, 0.99):.1f} "
        f"| {percentile(lags, 0.5):.2f} | {percentile(lags, 0.99):.1f} "
        f"| {max(lags, default=0):.0f} "
        f"| {sum(1 for lag in lags if lag > 5)} "
        f"| {len(pauses['0'])}/{len(pauses['1'])}/{len(full)} | {max(full, default=0):.1f} "
        f"| {json.dumps(caches, sort_keys=True)} | {json.dumps(bypassed, sort_keys=True)} "
        f"| {redis_gets} "
        f"| {os.getloadavg()[0]:.1f} |"
    )


HEADER = (
    "| run | rate | ok | failed | latency p50 ms | p99 | loop lag p50 ms | p99 | max | lags > 5 ms "
    "| GC gen0/1/2 | gen2 max ms | x-rightsize-cache | bypassed | Redis GET p50 / p99 / max ms "
    "| load |"
)

if __name__ == "__main__":
    if len(sys.argv) == 1 or "--serve-sampled" not in sys.argv:
        print(HEADER)
    main()
