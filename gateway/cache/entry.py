"""Cache entries: what is stored, how it is checked on the way out, and how it is replayed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.cache.keys import KEY_VERSION
from gateway.usage import usage_from
from policies import Usage


class CorruptEntry(ValueError):
    """A stored value that is not a well-formed entry for this key."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored chat completion, owned by one team."""

    team: str
    key: str
    deployment: str
    completion: dict[str, Any]
    # The completion's usage as `decode` already parsed it (a hit reads it again: 4 us).
    parsed_usage: Usage | None = field(default=None, compare=False, repr=False)

    @property
    def usage(self) -> Usage:
        if self.parsed_usage is not None:
            return self.parsed_usage
        usage = usage_from(self.completion.get("usage"))
        if usage is None:
            raise CorruptEntry("entry has no usage")
        return usage

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": KEY_VERSION,
                "team": self.team,
                "key": self.key,
                "deployment": self.deployment,
                "completion": self.completion,
            }
        )

    @classmethod
    def decode(cls, raw: bytes, *, team: str, key: str) -> CachedAnswer:
        """Parse and check a stored value; anything unexpected raises CorruptEntry."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptEntry(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != KEY_VERSION:
            raise CorruptEntry("unknown entry version")
        # The team and key are inside the value too, so a misplaced value can never be served.
        if data.get("team") != team or data.get("key") != key:
            raise CorruptEntry("entry belongs to another key")
        completion = data.get("completion")
        if not isinstance(completion, dict) or not _valid_choices(completion.get("choices")):
            raise CorruptEntry("entry has no valid choices")
        usage = usage_from(completion.get("usage"))
        if usage is None or not isinstance(data.get("deployment"), str):
            raise CorruptEntry("entry has no usage or deployment")
        return cls(team, key, data["deployment"], completion, usage)

    def response(self) -> dict[str, Any]:
        """The completion as a response body, stamped now (the stored value is left as it is)."""
        # A shallow copy is enough (only `created` changes); a deep copy cost about 11 us a hit.
        return {**self.completion, "created": int(time.time())}

    def chunks(self, include_usage: bool, cost_usd: str) -> Iterator[dict[str, Any]]:
        """The completion replayed as the chunks a streamed call would have produced."""
        base = {
            "id": self.completion.get("id"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.completion.get("model"),
        }
        if self.completion.get("system_fingerprint"):
            base["system_fingerprint"] = self.completion["system_fingerprint"]
        for choice in self.completion["choices"]:
            index, message = choice["index"], choice["message"]
            for delta in _deltas(message):
                yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
            finish = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
            yield {**base, "choices": [finish]}
        if include_usage:
            usage = dict(self.completion["usage"])
            yield {**base, "choices": [], "usage": {**usage, "cost_usd": cost_usd}}


def _deltas(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"role": message.get("role") or "assistant", "content": ""}
    if message.get("content"):
        yield {"content": message["content"]}
    if message.get("refusal"):
        yield {"refusal": message["refusal"]}
    for i, call in enumerate(message.get("tool_calls") or ()):
        yield {"tool_calls": [{"index": i, **call}]}


def _valid_choices(choices: Any) -> bool:
    if not isinstance(choices, list) or not choices:
        return False
    return all(
        isinstance(c, dict)
        and isinstance(c.get("index"), int)
        and isinstance(c.get("message"), dict)
        for c in choices
    )


class StreamAssembler:
    """Rebuilds the whole completion from a relayed stream, so a streamed miss can be stored."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {
                k: chunk[k] for k in ("id", "model", "system_fingerprint") if chunk.get(k)
            }
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            slot = self._choices.setdefault(
                index, {"role": "assistant", "content": [], "refusal": [], "tool_calls": {}}
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                slot["role"] = delta["role"]
            if delta.get("content"):
                slot["content"].append(delta["content"])
            if delta.get("refusal"):
                slot["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(slot["tool_calls"], call)
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]

    def completion(self, usage: dict[str, Any]) -> dict[str, Any] | None:
        """The completion, or None when the stream did not finish every choice."""
        if not self._choices or any("finish_reason" not in s for s in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            slot = self._choices[index]
            message: dict[str, Any] = {
                "role": slot["role"],
                "content": "".join(slot["content"]) or None,
            }
            if slot["refusal"]:
                message["refusal"] = "".join(slot["refusal"])
            if slot["tool_calls"]:
                message["tool_calls"] = [slot["tool_calls"][i] for i in sorted(slot["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "finish_reason": slot["finish_reason"]}
            )
        return {
            **self._head,
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": choices,
            "usage": usage,
        }


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", 0)
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""
