"""Check `local_backend` against a real vLLM on a GPU: its probes and the priority hint.

Run on a machine with an NVIDIA GPU and vLLM installed (docs/local_backend.md, "Checked on
a GPU", says how it was run and what it printed). Nothing here runs in the test suite.

1. Builds the tests' tiny random Llama (2 layers, a BPE tokenizer trained on the spot) with
   a head size vLLM's attention kernels take, and starts `vllm serve` on it with
   `--scheduling-policy priority` and one sequence at a time, so requests queue.
2. Probes it with `local_backend`'s own ProbeLoop: idle, then while requests queue; prints
   the readings beside the raw gauges of vLLM's /metrics.
3. Sends the priority hint as the gateway does (LocalBackend.priority from a predicted
   answer length): with the engine busy, a long-answer request (high value) is queued first,
   a short-answer one (0) after it; vLLM must start the short one first.

Exit status 0 only when every check held; each check prints PASS or FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_backend import (
    EngineLoad,
    LocalBackend,
    LocalBackendSettings,
    ProbeLoop,
    parse_engine_load,
)
from policies import Capabilities, Deployment, TokenPrice
from tests.local_engine import build_tiny_llama

MODEL = "tiny"
GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def start_vllm(model_dir: Path, port: int, log: Path, extra_env: dict[str, str]) -> Any:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(model_dir), "--served-model-name", MODEL, "--port", str(port)]
    command += ["--host", "127.0.0.1", "--enforce-eager", "--max-model-len", "512"]
    command += ["--max-num-seqs", "1", "--gpu-memory-utilization", "0.2"]
    command += ["--scheduling-policy", "priority", "--dtype", "bfloat16"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra_env}
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer need not be installed
    return subprocess.Popen(command, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


async def wait_healthy(process: Any, port: int, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    return False


def raw_gauges(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(GAUGES)]


async def chat(
    session: aiohttp.ClientSession, port: int, tokens: int, priority: int | None, tag: str
) -> tuple[str, float, float, dict[str, Any]]:
    """One request; its tag, when its first byte came and when it ended (monotonic)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"say hello {tag}"}],
        "max_tokens": tokens,
        "min_tokens": tokens,  # random weights: the answer's length must not hang on an EOS
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if priority is not None:
        body["priority"] = priority
    first = 0.0
    usage: dict[str, Any] = {}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{tag}: {response.status} {await response.text()}")
        async for line in response.content:
            if line.startswith(b"data: {") and not first:
                first = time.monotonic()
            if b'"usage":{' in line:
                usage = orjson.loads(line[6:]).get("usage") or usage
    return tag, first, time.monotonic(), usage


async def until_queued(
    session: aiohttp.ClientSession, metrics_url: str, waiting: int, limit_s: float = 5
) -> EngineLoad | None:
    """Poll vLLM's gauges until one request runs and `waiting` wait; that reading."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        async with session.get(metrics_url) as response:
            load = parse_engine_load("vllm", await response.text(), MODEL)
        if load.running == 1 and load.waiting == waiting:
            return load
        await asyncio.sleep(0.01)
    return None


async def queued_pair(
    session: aiohttp.ClientSession,
    port: int,
    metrics_url: str,
    long_hint: int | None,
    short_hint: int | None,
) -> list[str]:
    """With the engine busy, queue a long answer, then a short one: the order they started."""
    occupier = asyncio.create_task(chat(session, port, 480, short_hint, "occupier"))
    await until_queued(session, metrics_url, 0)
    long_one = asyncio.create_task(chat(session, port, 30, long_hint, "long"))
    await until_queued(session, metrics_url, 1)
    short_one = asyncio.create_task(chat(session, port, 30, short_hint, "short"))
    both = await until_queued(session, metrics_url, 2)
    check(
        both is not None and not occupier.done(),
        f"priorities {long_hint}, {short_hint}: both queued behind the running occupier",
    )
    done = await asyncio.gather(occupier, long_one, short_one)
    end = done[0][2]
    print(
        "    first bytes after the occupier's end: "
        + ", ".join(f"{tag} {first - end:+.3f} s" for tag, first, _, _ in done[1:]),
        flush=True,
    )
    return [tag for tag, _, _, _ in sorted(done[1:], key=lambda r: r[1])]


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.workdir) / "tiny-llama"
    model_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_llama(model_dir, hidden_size=256, heads=4)
    print(f"model built in {model_dir}", flush=True)
    return asyncio.run(serve_and_check(args, model_dir, out / "vllm.log"))


async def serve_and_check(args: argparse.Namespace, model_dir: Path, log: Path) -> int:
    process = start_vllm(model_dir, args.port, log, {})
    healthy = await wait_healthy(process, args.port, args.ready_s)
    if not healthy and process.poll() is not None:
        print("vLLM exited on its default attention backend; again on TRITON_ATTN", flush=True)
        process = start_vllm(model_dir, args.port, log, {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"})
        healthy = await wait_healthy(process, args.port, args.ready_s)
    check(healthy, "vLLM answered /health")
    if not healthy:
        process.kill()
        return 1
    try:
        await probe_and_prioritise(args.port)
    finally:
        process.terminate()
        process.wait(30)
    print(f"{len(failures)} check(s) failed" if failures else "every check held", flush=True)
    return 1 if failures else 0


async def probe_and_prioritise(port: int) -> None:
    free = TokenPrice(Decimal(0), Decimal(0), Decimal(0))
    url = f"http://127.0.0.1:{port}/v1"
    deployment = Deployment(
        "local-tiny", f"openai/{MODEL}", url, None, "local", "openai_http", 60, free,
        Capabilities(), True, engine="vllm", replicas=(url,),
    )  # fmt: skip
    settings = LocalBackendSettings.model_validate({"priority_hint": True})
    backend = LocalBackend([deployment], settings)
    probes = ProbeLoop(backend)
    async with aiohttp.ClientSession() as session:
        metrics_url = f"http://127.0.0.1:{port}/metrics"

        async def reading(when: str) -> Any:
            await probes.probe_all()
            async with session.get(metrics_url) as response:
                raw = raw_gauges(await response.text())
            (report,) = backend.report()
            print(f"{when}: probe read {report}", flush=True)
            for line in raw:
                print(f"    {line}", flush=True)
            return report

        idle = await reading("idle")
        check(idle.healthy, "the health probe passes")
        check(
            idle.waiting == 0 and idle.running == 0 and idle.kv_usage is not None,
            "idle: the probes read vLLM's own gauges (0 waiting, 0 running, a KV reading)",
        )

        burst = [asyncio.create_task(chat(session, port, 400, None, f"b{i}")) for i in range(5)]
        await asyncio.sleep(0.5)
        busy = await reading("five requests, one sequence at a time")
        check(
            busy.running == 1 and busy.waiting == 4,
            "busy: the probes read 1 running and 4 waiting",
        )
        check(busy.kv_usage is not None and busy.kv_usage > 0, "busy: KV-cache use above 0")
        state = backend.states()[deployment.name]
        print(f"    DeploymentState handed to decide(): {state}", flush=True)
        results = await asyncio.gather(*burst)
        check(
            all(r[3].get("completion_tokens") == 400 for r in results),
            "each answer's usage says 400 completion tokens",
        )

        long_hint = backend.priority(deployment, 1200)
        short_hint = backend.priority(deployment, 10)
        print(f"priority hint: p50 1200 tokens -> {long_hint}, 10 tokens -> {short_hint}")
        check(long_hint is not None and short_hint is not None, "the hint is on for vllm")
        for hinted in (True, False):  # without the hint, the same two go first come first served
            order = await queued_pair(
                session, port, metrics_url, long_hint if hinted else None, short_hint
            )
            check(
                order == (["short", "long"] if hinted else ["long", "short"]),
                f"{'with' if hinted else 'without'} the hint vLLM started {order}",
            )
        after = await reading("after")
        check(after.waiting == 0 and after.running == 0, "after: the probes read an idle engine")
    await probes.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vllm-check", help="where vllm.log goes")
    parser.add_argument("--workdir", default="/tmp/vllm-check")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--ready-s", type=float, default=300)
    sys.exit(main(parser.parse_args()))
