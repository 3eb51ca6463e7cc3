"""A small server speaking Anthropic's Messages API, for tests; behaviour chosen by model id.

claude-fake-ok        answers ANSWER (usage as the OpenAI fake's: 21 in, 7 out)
claude-fake-cache     like claude-fake-ok, reporting prompt-cache reads and writes (CACHE_USAGE);
claude-sonnet-4-5     so does this real model id (priced from litellm's map)
claude-fake-tool      calls TOOL_CALL while the last turn holds no tool_result, then answers
claude-fake-thinking  a thinking block (with its signature), then the answer
claude-fake-400       HTTP 400 with an Anthropic error body
claude-fake-500       HTTP 500 with an Anthropic error body
claude-fake-midstream streams the start of an answer, then an `error` event (overloaded)

Streams are Anthropic's event sequence: message_start, ping, per block content_block_start,
deltas (text_delta, input_json_delta, thinking_delta, signature_delta), content_block_stop,
message_delta with usage, message_stop. POST /v1/messages/count_tokens answers the length of the
messages' JSON, a count no tokenizer would give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fake_upstream import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, TOOL_CALL, ServedApp

CACHE_USAGE = {
    "input_tokens": 5,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 40,
    "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 10},
    "output_tokens": COMPLETION_TOKENS,
}
THINKING = "The user wants a greeting; a short one will do."
SIGNATURE = "sig-fake-0123456789"
TOOL_INPUT = orjson.loads(TOOL_CALL["arguments"])


class FakeAnthropic:
    """The app plus a record of the requests it received (path, body, headers)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            ]
        )

    def _record(self, request: Request, body: dict[str, Any]) -> None:
        headers = {h: request.headers.get(h) for h in _RECORDED_HEADERS}
        self.requests.append({"path": request.url.path, "body": body, "headers": headers})

    async def count_tokens(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        count = len(orjson.dumps(body["messages"]))
        return Response(orjson.dumps({"input_tokens": count}), media_type="application/json")

    async def messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self._record(request, body)
        model = body.get("model", "")
        if request.headers.get("x-api-key") != "sk-fake-anthropic":
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if model.endswith("fake-500"):
            return _error(500, "api_error", "the fake Anthropic upstream fell over")
        if model.endswith("fake-400"):
            return _error(400, "invalid_request_error", "the fake Anthropic upstream refuses")
        blocks = _blocks(model, body)
        usage = _usage(model)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        if body.get("stream"):
            events = _events(model, blocks, usage, stop)
            return StreamingResponse(events, media_type="text/event-stream")
        message = {
            "id": "msg_fake_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return Response(orjson.dumps(message), media_type="application/json")


_RECORDED_HEADERS = ("x-api-key", "anthropic-version", "anthropic-beta", "authorization")


def _blocks(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    if model.endswith("fake-tool") and body.get("tools") and not _answers_a_tool(body):
        return [
            {
                "type": "tool_use",
                "id": "toolu_fake_1",
                "name": TOOL_CALL["name"],
                "input": TOOL_INPUT,
            }
        ]
    text = {"type": "text", "text": ANSWER}
    if model.endswith("fake-thinking"):
        return [{"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}, text]
    return [text]


def _answers_a_tool(body: dict[str, Any]) -> bool:
    last = body["messages"][-1].get("content")
    return isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)


def _usage(model: str) -> dict[str, Any]:
    if model.endswith("fake-cache") or model == "claude-sonnet-4-5":
        return dict(CACHE_USAGE)
    return {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": COMPLETION_TOKENS,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


async def _events(
    model: str, blocks: list[dict[str, Any]], usage: dict[str, Any], stop: str
) -> AsyncIterator[bytes]:
    start = {
        "id": "msg_fake_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    if model.endswith("fake-midstream"):
        block = {"type": "text", "text": ""}
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        delta = {"type": "text_delta", "text": "Hel"}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
        error = {"type": "overloaded_error", "message": "the fake Anthropic upstream is overloaded"}
        yield _sse("error", {"type": "error", "error": error})
        return
    for index, block in enumerate(blocks):
        for delta in _deltas(block):
            yield _sse(
                "content_block_delta" if delta[0] else "content_block_start", delta[1](index)
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    final = {"output_tokens": usage["output_tokens"]}
    delta = {"stop_reason": stop, "stop_sequence": None}
    yield _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    yield _sse("message_stop", {"type": "message_stop"})


def _deltas(block: dict[str, Any]) -> list[tuple[bool, Any]]:
    """(is a delta, the event's data for a block index), the block's start first."""
    kind = block["type"]
    empty = {
        "text": {"type": "text", "text": ""},
        "thinking": {"type": "thinking", "thinking": "", "signature": ""},
        "tool_use": {**block, "input": {}},
    }[kind]
    out: list[tuple[bool, Any]] = [
        (False, lambda i: {"type": "content_block_start", "index": i, "content_block": empty})
    ]
    pieces: list[dict[str, Any]]
    if kind == "text":
        words = block["text"].split(" ")
        pieces = [
            {"type": "text_delta", "text": w if n == 0 else " " + w} for n, w in enumerate(words)
        ]
    elif kind == "thinking":
        half = len(block["thinking"]) // 2
        pieces = [
            {"type": "thinking_delta", "thinking": block["thinking"][:half]},
            {"type": "thinking_delta", "thinking": block["thinking"][half:]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    else:
        arguments = TOOL_CALL["arguments"]
        half = len(arguments) // 2
        pieces = [
            {"type": "input_json_delta", "partial_json": arguments[:half]},
            {"type": "input_json_delta", "partial_json": arguments[half:]},
        ]
    for piece in pieces:
        out.append(
            (True, lambda i, p=piece: {"type": "content_block_delta", "index": i, "delta": p})
        )
    return out


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _error(status: int, kind: str, message: str) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class RunningAnthropic(ServedApp):
    """The fake Anthropic upstream served on loopback from a background thread."""

    what = "the fake Anthropic upstream"

    def __init__(self) -> None:
        self.fake = FakeAnthropic()
        super().__init__(self.fake.app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
