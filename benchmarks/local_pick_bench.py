"""Replica picking on simulated engines: round robin against Rightsize's (load + prefix).

Usage: python benchmarks/local_pick_bench.py [--replicas 4] [--rates 8,12] [--seconds 600]
    [--seed 1] [--json]

A discrete-event simulation, so it measures the picking and nothing of the host: each engine
runs `--slots` requests at once and queues the rest (FIFO); a request's time to first token
is its queue wait plus its prefill, and prefill costs per uncached prompt token, more when the
batch is full. Each engine keeps a prefix cache (LRU of hashed prompt blocks), so a request
whose system prompt and conversation so far are cached there prefills only its new part.
Traffic: Poisson arrivals of multi-turn conversations, each under one of a few long system
prompts. Rightsize's picking is the real `local_backend.LocalBackend.pick`, fed the engines'
waiting and running counts every `--probe-s` (as the probe loop would) and told of each send;
`least-loaded` is the same with prefix affinity off (what the load score alone does).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from local_backend import EngineLoad, LocalBackend, LocalBackendSettings
from local_backend.affinity import prefix_hashes, prompt_text
from policies import Capabilities, Deployment, TokenPrice

CHARS_PER_TOKEN = 4
BLOCK_CHARS = 256


@dataclass
class Request:
    arrival: float
    messages: list[dict[str, str]]
    output_tokens: int
    ttft: float = 0.0
    cached_share: float = 0.0


@dataclass
class Engine:
    """A simulated engine: `slots` running at once, a FIFO queue, an LRU prefix cache."""

    url: str
    slots: int
    cache_blocks: int
    prefill_s_per_token: float
    decode_s_per_token: float
    running: int = 0
    queue: deque[Request] = field(default_factory=deque)
    cache: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def start(self, request: Request, now: float) -> float:
        """Begin `request` now; returns when it finishes (its TTFT is set)."""
        hashes = prefix_hashes(prompt_text(request.messages), BLOCK_CHARS, 10_000)
        cached = 0
        for digest in hashes:
            if digest not in self.cache:
                break
            cached += 1
        for digest in hashes:
            self.cache[digest] = None
            self.cache.move_to_end(digest)
        while len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)
        prompt_tokens = len(prompt_text(request.messages)) / CHARS_PER_TOKEN
        new_tokens = max(prompt_tokens - cached * BLOCK_CHARS / CHARS_PER_TOKEN, 1)
        request.cached_share = 1 - new_tokens / prompt_tokens
        self.running += 1
        # A full batch prefills more slowly: latency grows with load.
        prefill = new_tokens * self.prefill_s_per_token * (1 + 0.15 * (self.running - 1))
        request.ttft = now + prefill - request.arrival
        return now + prefill + request.output_tokens * self.decode_s_per_token


def workload(rate: float, seconds: float, rng: random.Random) -> list[tuple[float, int, int]]:
    """(arrival time, conversation, turn) for Poisson conversations of 1-6 turns."""
    events: list[tuple[float, int, int]] = []
    t, conversation = 0.0, 0
    while t < seconds:
        turns = rng.randint(1, 6)
        start = t
        for turn in range(turns):
            events.append((start, conversation, turn))
            start += rng.uniform(2.0, 8.0)  # the user reads and types
        conversation += 1
        t += rng.expovariate(rate / 3.5)  # 3.5 turns on average: `rate` requests a second
    return sorted(e for e in events if e[0] < seconds)


SYSTEMS = [f"System prompt {i}: " + (f"You follow policy section {i}. ") * 150 for i in range(32)]


def messages(conversation: int, turn: int) -> list[dict[str, str]]:
    rng = random.Random(conversation)
    talk = [{"role": "system", "content": SYSTEMS[conversation % len(SYSTEMS)]}]
    for i in range(turn + 1):
        talk.append(
            {"role": "user", "content": f"c{conversation} q{i} " + "words " * rng.randint(40, 160)}
        )
        if i < turn:
            talk.append({"role": "assistant", "content": f"c{conversation} a{i} " + "reply " * 120})
    return talk


Picker = Callable[[Request, float], int]


def simulate(picker_name: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    engines = [
        Engine(f"http://gpu{i}:8000/v1", args.slots, args.cache_blocks, 0.0004, 0.02)
        for i in range(args.replicas)
    ]
    free = TokenPrice(Decimal(0), Decimal(0), Decimal(0))
    deployment = Deployment(
        "gpu", "openai/m", engines[0].url, None, "local", "openai_http", 60, free,
        Capabilities(), True, engine="vllm", replicas=tuple(e.url for e in engines),
    )  # fmt: skip
    now = [0.0]
    backend = LocalBackend(
        [deployment],
        LocalBackendSettings.model_validate(
            {"affinity": {"block_chars": BLOCK_CHARS, "enabled": picker_name == "rightsize"}}
        ),
        clock=lambda: now[0],
    )
    replicas = backend.replicas("gpu")
    by_url = {e.url: i for i, e in enumerate(engines)}
    turn = itertools.count()

    def pick(request: Request) -> int:
        if picker_name == "round-robin":
            return next(turn) % len(engines)
        choice = backend.pick(deployment, request.messages)
        replica = choice.replicas[0]
        backend.sent(choice, replica)
        return by_url[replica.url]

    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    for arrival, conversation, t in workload(rate, args.seconds, rng):
        request = Request(arrival, messages(conversation, t), rng.randint(50, 250))
        heapq.heappush(events, (arrival, next(seq), "arrive", request))
    probe = 0.0
    while probe < args.seconds * 1.5:
        heapq.heappush(events, (probe, next(seq), "probe", None))
        probe += args.probe_s
    done: list[Request] = []
    while events:
        at, _, kind, payload = heapq.heappop(events)
        now[0] = at
        if kind == "probe":
            for engine, replica in zip(engines, replicas, strict=True):
                replica.read(EngineLoad(len(engine.queue), engine.running, None), at)
        elif kind == "arrive":
            index = pick(payload)
            engine = engines[index]
            if engine.running < engine.slots:
                heapq.heappush(
                    events, (engine.start(payload, at), next(seq), "finish", (index, payload))
                )
            else:
                engine.queue.append(payload)
        else:
            index, request = payload
            engine = engines[index]
            engine.running -= 1
            done.append(request)
            if picker_name != "round-robin":
                backend.finished(replicas[index], None)
            if engine.queue:
                nxt = engine.queue.popleft()
                heapq.heappush(events, (engine.start(nxt, at), next(seq), "finish", (index, nxt)))
    ttfts = sorted(r.ttft for r in done)
    return {
        "picker": picker_name,
        "rate_rps": rate,
        "requests": len(done),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_p99_ms": round(1000 * ttfts[int(0.99 * (len(ttfts) - 1))], 1),
        "prefix_hit_rate": round(sum(r.cached_share > 0.5 for r in done) / len(done), 3),
        "cached_prompt_share": round(statistics.fmean(r.cached_share for r in done), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="requests an engine runs at once")
    parser.add_argument("--cache-blocks", type=int, default=600, help="prefix cache per engine")
    parser.add_argument("--rates", default="5,8", help="requests per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--probe-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [
        simulate(picker, float(rate), args)
        for rate in args.rates.split(",")
        for picker in ("round-robin", "least-loaded", "rightsize")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| picker | rate (req/s) | requests | TTFT p50 ms | TTFT p99 ms | prefix-hit rate "
        "| cached prompt share |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['picker']} | {r['rate_rps']:g} | {r['requests']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['prefix_hit_rate']:.1%} | {r['cached_prompt_share']:.1%} |"
        )


if __name__ == "__main__":
    main()
