"""A fake local inference engine on loopback: OpenAI chat, /health, and Prometheus /metrics in
vLLM's or SGLang's own format, with its load set by the test. It can be stopped and started
again on the same port (a replica restarted)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fake_upstream import free_port

PROMPT_TOKENS = 11
COMPLETION_TOKENS = 3


def vllm_metrics(model: str, waiting: float, running: float, kv: float) -> str:
    """vLLM v1's exposition: HELP and TYPE lines, `engine` and `model_name` labels."""
    labels = f'engine="0",model_name="{model}"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {running:.1f}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {waiting:.1f}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{{{labels}}} {kv}\n"
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f"vllm:prompt_tokens_total{{{labels}}} 1234.0\n"
    )


def sglang_metrics(model: str, waiting: float, running: float, kv: float) -> str:
    """SGLang's exposition (--enable-metrics): `model_name` and rank labels."""
    labels = f'model_name="{model}",tp_rank="0",pp_rank="0"'
    return (
        "# HELP sglang:num_running_reqs The number of running requests.\n"
        "# TYPE sglang:num_running_reqs gauge\n"
        f"sglang:num_running_reqs{{{labels}}} {running:.1f}\n"
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
        "# TYPE sglang:num_queue_reqs gauge\n"
        f"sglang:num_queue_reqs{{{labels}}} {waiting:.1f}\n"
        "# HELP sglang:token_usage The token usage.\n"
        "# TYPE sglang:token_usage gauge\n"
        f"sglang:token_usage{{{labels}}} {kv}\n"
        "# HELP sglang:gen_throughput The generation throughput (token/s).\n"
        "# TYPE sglang:gen_throughput gauge\n"
        f"sglang:gen_throughput{{{labels}}} 86.5\n"
    )


@dataclass
class EngineState:
    """What the engine reports and records; the test changes it while the engine runs."""

    name: str
    engine: str = "vllm"
    model: str = "local-model"
    waiting: float = 0
    running: float = 0
    kv: float = 0.1
    metrics_status: int = 200  # anything else: the reading goes stale
    health_delay_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    probes_in_flight: int = 0
    max_probes_in_flight: int = 0


class FakeEngine:
    """The engine's app over an EngineState."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/metrics", self.metrics),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def health(self, _: Request) -> Response:
        state = self.state
        state.probes_in_flight += 1
        state.max_probes_in_flight = max(state.max_probes_in_flight, state.probes_in_flight)
        try:
            await asyncio.sleep(state.health_delay_s)
        finally:
            state.probes_in_flight -= 1
        return Response(status_code=200)

    async def metrics(self, _: Request) -> Response:
        state = self.state
        if state.metrics_status != 200:
            return PlainTextResponse("metrics unavailable", status_code=state.metrics_status)
        render = vllm_metrics if state.engine == "vllm" else sglang_metrics
        return PlainTextResponse(render(state.model, state.waiting, state.running, state.kv))

    async def models(self, _: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": [{"id": self.state.model}]}))

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.state.bodies.append(body)
        answer = f"served by {self.state.name}"
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        if body.get("stream"):
            return StreamingResponse(
                _stream(body["model"], answer, usage), media_type="text/event-stream"
            )
        return Response(
            orjson.dumps(
                {
                    "id": "chatcmpl-engine",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            ),
            media_type="application/json",
        )


async def _stream(model: str, answer: str, usage: dict[str, int]) -> Any:
    base = {
        "id": "chatcmpl-engine",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
    }
    for delta in ({"role": "assistant", "content": answer}, {}):
        chunk = {**base, "choices": [{"index": 0, "delta": delta}]}
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


class RunningEngine:
    """A FakeEngine served from a thread; `stop()` and `start()` again on the same port."""

    def __init__(self, state: EngineState) -> None:
        self.engine = FakeEngine(state)
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> EngineState:
        return self.engine.state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> RunningEngine:
        config = uvicorn.Config(
            self.engine.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake engine did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> RunningEngine:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
