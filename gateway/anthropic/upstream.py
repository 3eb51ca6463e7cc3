"""An Anthropic upstream's answers in the internal (OpenAI) shape, for metering and the cache.

The client of `/v1/messages` gets the upstream's message or events as they came; the pipeline
reads their usage, text and tool calls through these translations, as it does for every other
provider. Anthropic's input_tokens excludes the prompt-cache reads and writes; the OpenAI
shape's prompt_tokens includes both (as litellm reports them).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.native import NATIVE

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def openai_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as OpenAI's, the cache writes under litellm's names."""
    usage = usage or {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    output = int(usage.get("output_tokens") or 0)
    details: dict[str, Any] = {"cached_tokens": read}
    if written:
        details["cache_creation_tokens"] = written
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, dict):
            details["cache_creation_token_details"] = {
                "ephemeral_5m_input_tokens": int(breakdown.get("ephemeral_5m_input_tokens") or 0),
                "ephemeral_1h_input_tokens": int(breakdown.get("ephemeral_1h_input_tokens") or 0),
            }
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": details,
    }


def completion(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message as an OpenAI chat completion, the message itself under NATIVE."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": _json(block.get("input"))},
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if calls:
        reply["tool_calls"] = calls
    finish = _FINISH_REASONS.get(message.get("stop_reason") or "", "stop")
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
        "usage": openai_usage(message.get("usage")),
        NATIVE: message,
    }


class EventReader:
    """Anthropic stream events, in order, as OpenAI chunks each carrying its event under NATIVE.

    The usage is message_start's, updated by message_delta's (cumulative counts); the chunk of
    message_delta carries it whole.
    """

    def __init__(self) -> None:
        self._id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # a tool_use block's index -> its OpenAI tool index

    def chunk(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        kind = data.get("type")
        delta: dict[str, Any] = {}
        finish: str | None = None
        usage: dict[str, Any] | None = None
        if kind == "message_start":
            message = data.get("message") or {}
            self._id, self._model = message.get("id"), message.get("model")
            self._usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools.setdefault(data.get("index", 0), len(self._tools))
                function = {"name": block.get("name"), "arguments": ""}
                call = {"index": index, "id": block.get("id"), "type": "function"}
                delta["tool_calls"] = [{**call, "function": function}]
            elif block.get("type") == "text" and block.get("text"):
                delta["content"] = block["text"]
        elif kind == "content_block_delta":
            delta = self._delta(data.get("index", 0), data.get("delta") or {})
        elif kind == "message_delta":
            finish = _FINISH_REASONS.get((data.get("delta") or {}).get("stop_reason") or "", "stop")
            self._usage.update(
                {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            )
            usage = openai_usage(self._usage)
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            if delta or finish
            else [],
            NATIVE: {"event": name, "data": data},
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def _delta(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        kind = delta.get("type")
        if kind == "text_delta":
            return {"content": delta.get("text") or ""}
        if kind == "thinking_delta":
            return {"reasoning_content": delta.get("thinking") or ""}
        if kind == "input_json_delta" and index in self._tools:
            function = {"arguments": delta.get("partial_json") or ""}
            return {"tool_calls": [{"index": self._tools[index], "function": function}]}
        return {}


def _json(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()
