"""A small OpenAI-compatible server for tests and benchmarks; behaviour chosen by model id.

fake-ok          answers "Hello from the fake upstream." with usage
fake-cached      like fake-ok, reporting 8 cached prompt tokens
fake-nousage     answers without usage (the gateway must count tokens itself)
fake-500         HTTP 500 with an OpenAI error body
fake-400         HTTP 400 with an OpenAI error body
fake-slow        waits 3 s before answering
fake-midstream   streams two chunks, then breaks the connection
fake-echo        HTTP 500 whose error message quotes the request's API key and headers
fake-bigchunk    streams one chunk of BIG_CHUNK_CHARS characters (an SSE line over 1 MB)
fake-steady      streams STEADY_CHUNKS chunks STEADY_GAP_S apart (a long answer, steadily)
fake-stall       streams two chunks, then nothing for 3 s
fake-crlf        streams RAW_STREAMS' body: CRLF line endings, the last line without one, no [DONE]
fake-redirect    HTTP 307 back to /v1/chat/completions (a client following it loops)
fake-garbled     streams RAW_STREAMS' body: a chunk, then a `data:` line that is not JSON
fake-long        answers LONG_ANSWER (longer than ANSWER), like fake-ok otherwise
fake-judge       a pairwise judge (gateway/shadow.py's prompt): "[[A]]" or "[[B]]" for the longer
                 of the two answers in the last message, "[[C]]" when they are as long
fake-judge-a     a judge with a position bias: always "[[A]]"
fake-garbage     answers text with no verdict in it
fake-tool        calls the tool TOOL_CALL (streamed: its arguments in two pieces); once the
                 last message is the tool's result, answers as fake-ok

Latency knob: `delay_s[model id]` (seconds, changeable while serving) delays every chat answer
of that model id before anything else (`default_delay_s` every unlisted one); any unlisted id
not above answers as fake-ok.

POST /v1/embeddings answers any model but fake-500 with embedding(i) for input i, as floats or
as base64 float32 (encoding_format), and usage of EMBED_TOKENS per input (fake-nousage: none).

Each request's client address is recorded too: the number of distinct ones is the number of
connections the client opened.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

ANSWER = "Hello from the fake upstream."
LONG_ANSWER = "Hello from the fake upstream, at length: a longer and more detailed answer."
PROMPT_TOKENS = 21
COMPLETION_TOKENS = 7
CACHED_TOKENS = 8
BIG_CHUNK_CHARS = 1_200_000
STEADY_CHUNKS = 8
STEADY_GAP_S = 0.1
EMBED_TOKENS = 5  # per input: not what cl100k counts, so a test sees whose count is billed
TOOL_CALL = {"id": "call_fake_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
RAW_STREAMS = {
    "fake-crlf": b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\r\n\r\n'
    b": a comment line\r\n"
    b'data: {"choices": [{"index": 0, "delta": {"content": "lo"}}]}',
    "fake-garbled": b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
    b"data: {not json\n\n",
}


class FakeUpstream:
    """The app plus a record of the bodies it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay_s: dict[str, float] = {}  # the latency knob, by model id
        self.default_delay_s = 0.0  # ... and for every model id it does not list
        # `fake-held` streams send their first chunk, then wait for this (tests/test_hot_reload.py).
        self.release_held = threading.Event()
        self.held_started = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/_requests", self.recorded, methods=["GET"]),
            ]
        )

    async def recorded(self, _: Request) -> Response:
        return Response(orjson.dumps(self.requests[-50:]), media_type="application/json")

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        client = request.client
        self.requests.append(
            {
                "body": body,
                "auth": request.headers.get("authorization"),
                "peer": f"{client.host}:{client.port}" if client else None,
            }
        )
        model = body.get("model", "")
        delay = self.delay_s.get(model.removeprefix("openai/"), self.default_delay_s)
        if delay:
            await asyncio.sleep(delay)
        if model.endswith("fake-500"):
            return _error(500, "the fake upstream fell over")
        if model.endswith("fake-400"):
            return _error(400, "the fake upstream rejects this request")
        if model.endswith("fake-echo"):
            return _echo_credentials(request)
        if model.endswith("fake-redirect"):
            return Response(status_code=307, headers={"location": "/v1/chat/completions"})
        if model.endswith("fake-slow"):
            await asyncio.sleep(3)
        if body.get("stream") and model.endswith("fake-held"):
            return StreamingResponse(self._held_chunks(body), media_type="text/event-stream")
        if body.get("stream") and model in RAW_STREAMS:
            return Response(RAW_STREAMS[model], media_type="text/event-stream")
        if body.get("stream") and model.endswith("fake-tool") and not _answers_a_tool(body):
            return StreamingResponse(_tool_chunks(body), media_type="text/event-stream")
        if body.get("stream"):
            return StreamingResponse(_chunks(body), media_type="text/event-stream")
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": _answer(body)},
            "finish_reason": "stop",
        }
        if model.endswith("fake-tool") and not _answers_a_tool(body):
            choice = {"index": 0, "message": _tool_message(), "finish_reason": "tool_calls"}
        result: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
        if not model.endswith("fake-nousage"):
            result["usage"] = _usage(model)
        return Response(orjson.dumps(result), media_type="application/json")

    async def _held_chunks(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        chunks = _chunks(body)
        yield await anext(chunks)
        self.held_started.set()
        await asyncio.to_thread(self.release_held.wait, 60)
        async for chunk in chunks:
            yield chunk

    async def embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append({"body": body, "auth": request.headers.get("authorization")})
        model = body.get("model", "")
        delay = self.delay_s.get(model.removeprefix("openai/"), self.default_delay_s)
        if delay:
            await asyncio.sleep(delay)
        if model.endswith("fake-500"):
            return _error(500, "the fake upstream fell over")
        inputs = body["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        data = []
        for i in range(count):
            vector: Any = embedding(i)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        result: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not model.endswith("fake-nousage"):
            tokens = EMBED_TOKENS * count
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return Response(orjson.dumps(result), media_type="application/json")


def _answer(body: dict[str, Any]) -> str:
    model = body.get("model", "")
    if model.endswith("fake-long"):
        return LONG_ANSWER
    if model.endswith("fake-judge-a"):
        return "Assistant A is better. [[A]]"
    if model.endswith("fake-judge"):
        last = str((body.get("messages") or [{}])[-1].get("content") or "")
        a = _between(last, "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's")
        b = _between(last, "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's")
        verdict = "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"
        return f"The longer answer is the better one. {verdict}"
    if model.endswith("fake-garbage"):
        return "I would rather not say which is better."
    return ANSWER


def _between(text: str, start: str, end: str) -> str:
    _, found, rest = text.partition(start)
    return rest.partition(end)[0] if found else ""


def embedding(index: int) -> list[float]:
    """The fake's vector for input number `index` (exact in float32)."""
    return [index + 0.25, -0.5, 0.125]


def _answers_a_tool(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or [{}]
    return bool(messages[-1].get("role") == "tool")


def _usage(model: str) -> dict[str, Any]:
    cached = CACHED_TOKENS if model.endswith("fake-cached") else 0
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def _chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
    model = body["model"]
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}
    words = ANSWER.split(" ")
    if model.endswith("fake-bigchunk"):
        words = ["x" * BIG_CHUNK_CHARS]
    elif model.endswith("fake-steady"):
        words = [f"w{i}" for i in range(STEADY_CHUNKS)]
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        yield _sse({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
        if model.endswith("fake-midstream") and i == 1:
            raise ConnectionResetError("the fake upstream drops the stream")
        if model.endswith("fake-steady"):
            await asyncio.sleep(STEADY_GAP_S)
        if model.endswith("fake-stall"):
            await asyncio.sleep(3)
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    include = (body.get("stream_options") or {}).get("include_usage")
    if include and not model.endswith("fake-nousage"):
        yield _sse({**base, "choices": [], "usage": _usage(model)})
    yield b"data: [DONE]\n\n"


def _tool_message() -> dict[str, Any]:
    function = {"name": TOOL_CALL["name"], "arguments": TOOL_CALL["arguments"]}
    call = {"id": TOOL_CALL["id"], "type": "function", "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


async def _tool_chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1}
    base["model"] = body["model"]
    arguments = TOOL_CALL["arguments"]
    half = len(arguments) // 2
    opening = {"index": 0, "id": TOOL_CALL["id"], "type": "function"}
    opening["function"] = {"name": TOOL_CALL["name"], "arguments": ""}
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [opening]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]
    for delta in deltas:
        yield _sse({**base, "choices": [{"index": 0, "delta": delta}]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _sse({**base, "choices": [], "usage": _usage(body["model"])})
    yield b"data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _echo_credentials(request: Request) -> Response:
    """A 500 whose body quotes the request's credentials, as careless upstreams do."""
    header = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
    key = header.removeprefix("Bearer ").strip()
    message = (
        f"Incorrect API key provided: {key}. Request headers: "
        f"{{'authorization': '{header}', 'x-api-key': '{key}'}}"
    )
    return _error(500, message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServedApp:
    """An ASGI app served by uvicorn on a free loopback port from a background thread."""

    what = "the fake upstream"

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.what} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


class RunningUpstream(ServedApp):
    """The fake upstream served on loopback from a background thread."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        super().__init__(self.fake.app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(FakeUpstream().app, host="127.0.0.1", port=args.port, log_level="warning")
