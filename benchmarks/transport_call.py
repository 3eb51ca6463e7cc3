"""Time of one upstream call through the direct transport, plain and streamed, at concurrency 1.

Starts the fake upstream in its own process on loopback and times N sequential calls of each
kind through `OpenAIHTTPProvider`; with --baseline REV, the provider as it was at git revision
REV is timed too, in alternating rounds so that both see the same machine load.

    python benchmarks/transport_call.py [--calls 2000] [--rounds 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.providers import OpenAIHTTPProvider  # noqa: E402
from policies import Capabilities, Deployment, TokenPrice  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

PAYLOAD = {"messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 7}
PRICE = TokenPrice(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.0000005"))


def provider_class_at(revision: str) -> Any:
    """OpenAIHTTPProvider as gateway/providers/openai_http.py defined it at `revision`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:gateway/providers/openai_http.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="rightsize-transport-")) / "baseline_openai_http.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_openai_http", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OpenAIHTTPProvider


async def time_calls(provider_class: Any, deployment: Deployment, calls: int) -> dict[str, float]:
    """Median milliseconds of a plain call and of a whole stream, after a warm-up."""
    provider = provider_class({deployment.name: "sk-bench"})
    try:
        for _ in range(50):
            await provider.complete(deployment, PAYLOAD)
            async for _chunk in provider.stream(deployment, PAYLOAD):
                pass
        plain, streamed = [], []
        for _ in range(calls):
            start = time.perf_counter()
            await provider.complete(deployment, PAYLOAD)
            plain.append((time.perf_counter() - start) * 1000)
        for _ in range(calls):
            start = time.perf_counter()
            async for _chunk in provider.stream(deployment, PAYLOAD):
                pass
            streamed.append((time.perf_counter() - start) * 1000)
    finally:
        await provider.aclose()
    return {"plain": statistics.median(plain), "stream": statistics.median(streamed)}


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="Calls of each kind per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="A git revision whose provider is timed too.")
    args = parser.parse_args()

    providers: dict[str, Any] = {"working tree": OpenAIHTTPProvider}
    if args.baseline:
        providers[f"at {args.baseline}"] = provider_class_at(args.baseline)
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)], cwd=ROOT
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/_requests")
        deployment = Deployment(
            "bench", "openai/fake-ok", f"http://127.0.0.1:{port}/v1", None, None,
            "openai_http", 30, PRICE, Capabilities(), False,
        )  # fmt: skip
        results: dict[str, list[dict[str, float]]] = {name: [] for name in providers}
        for _ in range(args.rounds):
            for name, provider_class in providers.items():
                results[name].append(
                    asyncio.run(time_calls(provider_class, deployment, args.calls))
                )
    finally:
        upstream.terminate()
        upstream.wait(timeout=15)

    print(f"calls={args.calls} per kind and round, rounds={args.rounds}, concurrency 1")
    print("| provider | plain p50 ms (per round) | stream p50 ms (per round) |")
    print("|---|---|---|")
    for name, rounds in results.items():
        plain = " / ".join(f"{r['plain']:.3f}" for r in rounds)
        stream = " / ".join(f"{r['stream']:.3f}" for r in rounds)
        print(f"| {name} | {plain} | {stream} |")


if __name__ == "__main__":
    main()
