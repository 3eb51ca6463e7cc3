"""Bounds on a request's shape, checked on the decoded body before it is validated.

The byte limit alone does not bound the cost of a body: 3.4 MB of 100,000 one-word messages
takes a second of validation and serialization, 4 MB of 150,000 empty content parts half a
second, and a tool schema nested 250 deep breaks the recursive code that serializes it.
Validation runs in pydantic-core, which holds the interpreter's lock throughout, so a worker
thread does not keep it from stalling the event loop: only a bound on the number of validated
items does. Each bound is a setting of `server`, and each refusal is a 400 naming the limit and
that setting, so a client that hits one knows what to change.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.settings import ServerSettings


class ShapeLimitExceeded(InvalidRequest):
    """A request over one of the shape limits: the message names the limit and its setting."""

    code = "request_shape_limit"


def check_chat_shape(body: dict[str, Any], server: ServerSettings) -> None:
    """Refuse a chat body over the configured bounds; cheap checks first, the walk last."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > server.max_messages:
        raise ShapeLimitExceeded(
            f"The request has {len(messages)} messages; the limit is {server.max_messages} "
            "(server.max_messages)",
            param="messages",
        )
    parts = _message_parts(messages) if isinstance(messages, list) else 0
    if parts > server.max_message_parts:
        raise ShapeLimitExceeded(
            f"The messages have {parts} content parts and tool calls; the limit is "
            f"{server.max_message_parts} (server.max_message_parts)",
            param="messages",
        )
    tools = [
        *_definitions(body, "tools"),
        *_definitions(body, "functions"),
    ]
    if len(tools) > server.max_tools:
        raise ShapeLimitExceeded(
            f"The request has {len(tools)} tools and functions; the limit is {server.max_tools} "
            "(server.max_tools)",
            param="tools",
        )
    # Depth before size: serializing a deeply nested tool is what must not be attempted.
    depth = json_depth(body, server.max_json_depth)
    if depth > server.max_json_depth:
        raise ShapeLimitExceeded(
            f"The request body nests JSON objects and arrays more than {server.max_json_depth} "
            "levels deep (server.max_json_depth)"
        )
    for param, tool in tools:
        size = len(orjson.dumps(tool))
        if size > server.max_tool_schema_bytes:
            raise ShapeLimitExceeded(
                f"The definition of {param} is {size} bytes; the limit is "
                f"{server.max_tool_schema_bytes} bytes per tool (server.max_tool_schema_bytes)",
                param=param,
            )


def json_depth(value: Any, limit: int) -> int:
    """How deep objects and arrays nest in `value` (a scalar: 0), counting no further than
    one past `limit`. Iterative, so that no depth can exhaust the interpreter's stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _message_parts(messages: list[Any]) -> int:
    count = 0
    for message in messages:
        if isinstance(message, dict):
            for field in ("content", "tool_calls"):
                if isinstance(message.get(field), list):
                    count += len(message[field])
    return count


def _definitions(body: dict[str, Any], field: str) -> list[tuple[str, Any]]:
    items = body.get(field)
    if not isinstance(items, list):
        return []
    return [(f"{field}[{i}]", item) for i, item in enumerate(items)]
