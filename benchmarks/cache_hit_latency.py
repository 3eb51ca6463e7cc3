"""End-to-end latency of an exact prompt-cache hit through `rightsize serve` on loopback.

Starts the fake upstream and the gateway (one worker) as separate processes, primes the cache
with one temperature-0 request, then times N sequential hits (concurrency 1) with a minimal
keep-alive HTTP/1.1 client on a raw socket (so the client's own cost stays out of the figure),
and again with httpx. Runs the in-process store and the Redis store (REDIS_URL).

    python benchmarks/cache_hit_latency.py [--requests 3000] [--stores memory,redis]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import free_port  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = orjson.dumps(
    {
        "model": "pinned",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Say hello in one word."},
        ],
    }
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process for {url} exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


class RawClient:
    """HTTP/1.1 keep-alive POSTs on one socket; reads exactly one response each time."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["content-type: application/json", f"content-length: {len(BODY)}", "", ""]
        self.request = "\r\n".join(lines).encode() + BODY
        self.buffer = b""

    def post(self) -> tuple[bytes, bytes]:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        return head, rest[:length]


def time_raw(
    port: int, headers: dict[str, str], total: int
) -> tuple[list[float], list[float], int]:
    """Latencies of hits, their overhead headers, and how many answers were not hits."""
    client = RawClient(port, "/v1/chat/completions", headers)
    latencies, overheads, misses = [], [], 0
    for i in range(total + 200):
        start = time.perf_counter()
        head, _ = client.post()
        elapsed = (time.perf_counter() - start) * 1000
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"request failed:\n{head.decode()}")
        if b"x-rightsize-cache: hit" not in head:
            misses += 1  # Redis past its deadline: bypassed, answered upstream
            continue
        if i >= 200:  # warm-up
            latencies.append(elapsed)
            for line in head.split(b"\r\n"):
                if line.startswith(b"x-rightsize-overhead-ms:"):
                    overheads.append(float(line.split(b":")[1]))
    return latencies, overheads, misses


def time_httpx(base: str, headers: dict[str, str], total: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(total + 200):
            start = time.perf_counter()
            response = client.post("/v1/chat/completions", content=BODY, headers=headers)
            elapsed = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            if i >= 200 and response.headers.get("x-rightsize-cache") == "hit":
                latencies.append(elapsed)
    return latencies


def run(store: str, total: int) -> str:
    up_port, gw_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rightsize-cache-bench-"))
    prefix = f"rightsize-bench:{uuid.uuid4().hex[:8]}:"
    config: dict[str, object] = {
        "store": {
            "url": f"sqlite:///{workdir / 'bench.db'}",
            "redis_url": REDIS_URL if store == "redis" else None,
        },
        "cache": {"backend": store, "key_prefix": prefix},
        "models": [
            {
                "name": "pinned",
                "model": "openai/fake-ok",
                "api_base": f"http://127.0.0.1:{up_port}/v1",
                "transport": "openai_http",
                "local": True,
            }
        ],
    }
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RIGHTSIZE_MASTER_KEY": "bench", "RIGHTSIZE_KEY_SECRET": "bench"}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(up_port)], cwd=ROOT
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(workdir / "bench.yaml"),
         "--port", str(gw_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load = os.getloadavg()[0]  # the 1-minute load average as the run starts (uptime)
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/_requests", upstream)
        base = f"http://127.0.0.1:{gw_port}"
        wait_ready(base + "/healthz", gateway)
        admin = {"authorization": "Bearer bench"}
        httpx.post(base + "/admin/teams", json={"name": "bench"}, headers=admin).raise_for_status()
        key = httpx.post(base + "/admin/keys", json={"team": "bench"}, headers=admin).json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        primed = httpx.post(
            base + "/v1/chat/completions",
            content=BODY,
            headers={**auth, "content-type": "application/json"},
        )
        primed.raise_for_status()
        time.sleep(0.2)  # the store happens after the response
        raw, overhead, misses = time_raw(gw_port, auth, total)
        via_httpx = time_httpx(base, {**auth, "content-type": "application/json"}, total)
        stats = httpx.get(base + "/admin/cache", headers=admin).json()
        bypassed = stats["bypassed"]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(bypassed.items()))
        return (
            f"| {store} | {percentile(raw, 0.5):.3f} | {percentile(raw, 0.99):.3f} "
            f"| {statistics.mean(raw):.3f} | {percentile(via_httpx, 0.5):.3f} "
            f"| {percentile(via_httpx, 0.99):.3f} | {statistics.median(overhead):.3f} "
            f"| {misses} | {sum(bypassed.values())}{f' ({reasons})' if reasons else ''} "
            f"| {load:.2f} |"
        )
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(timeout=15)
        upstream.wait(timeout=15)
        if store == "redis":
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.unlink(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--stores", default="memory,redis")
    args = parser.parse_args()
    print(f"exact cache hits, concurrency 1, {args.requests} timed requests per client (ms)")
    print(
        "| store | raw p50 | raw p99 | raw mean | httpx p50 | httpx p99 "
        "| overhead header p50 | raw non-hits | Redis bypasses | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for store in args.stores.split(","):
        print(run(store, args.requests), flush=True)


if __name__ == "__main__":
    main()
