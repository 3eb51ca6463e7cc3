"""OpenAI chat-completion chunks re-told as Anthropic's message stream events.

The event sequence the anthropic SDK parses: message_start, then per content block
content_block_start, content_block_delta (text_delta, input_json_delta), content_block_stop,
then message_delta (stop_reason, usage) and message_stop; an error after the first byte is an
`error` event. Text and each tool call become one block each, in the order they arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.anthropic.errors import error_body
from gateway.anthropic.translate import message_id, stop, usage
from gateway.errors import GatewayError
from gateway.native import NATIVE


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """Feed it the chunks in order, then `end()` (or `error()`); each returns the bytes to send."""

    def __init__(
        self, model: str, stop_sequences: Sequence[str] | None, input_tokens: int = 0
    ) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._stop_sequences = stop_sequences
        self._started = False
        self._index = -1  # the open block's index, -1 before the first
        self._open: str | int | None = None  # "text", an OpenAI tool-call index, or None
        self._call_id: str | None = None  # the open tool call's id
        self._choice: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._native = False  # relaying an Anthropic-format upstream's own events

    def feed(self, chunk: dict[str, Any]) -> bytes:
        native = chunk.get(NATIVE)
        if native is not None:
            # An Anthropic-format upstream's own event: relayed as it came, and from then on
            # nothing of the translation (the upstream sends its own message_stop).
            self._native = True
            return event(native["event"], native["data"])
        if self._native:
            return b""
        out = [self._start(chunk)]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # Anthropic has one answer per request (no `n`)
            delta = choice.get("delta") or {}
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    out.append(self._text(text))
            for call in delta.get("tool_calls") or ():
                out.append(self._tool_call(call))
            if choice.get("finish_reason"):
                self._choice = choice
        return b"".join(out)

    def end(self) -> bytes:
        """Close the open block, then message_delta with the stop reason and usage."""
        if self._native:
            return b""
        out = [self._start({}), self._close()]
        stop_reason, stop_sequence = stop(self._choice, self._stop_sequences)
        counts = usage(self._usage)
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": counts,
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, error: GatewayError) -> bytes:
        return event("error", error_body(error))

    def _start(self, chunk: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The upstream counts only at the end (message_delta carries its numbers); until
            # then the caller's estimate, for clients that read input tokens here only.
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._open_block("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": text})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        call_id = call.get("id")
        # A new call has a new index; some servers repeat the id on every chunk of one call.
        if self._open != index or (call_id and call_id != self._call_id):
            self._call_id = call_id or "toolu_" + message_id()[4:]
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": self._call_id,
                "name": function.get("name") or "",
                "input": {},
            }
            out = self._open_block(index, block)
        arguments = function.get("arguments")
        if arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _open_block(self, kind: str | int, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + event("content_block_start", start)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return event("content_block_delta", body)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        body = {"type": "content_block_stop", "index": self._index}
        return event("content_block_stop", body)
