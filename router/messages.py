"""Turn an OpenAI-shaped chat into the text the router encodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _content_text(content: Any) -> str:
    """Join the text parts of a message content (a str or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return str(content)


def prompt_from_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the last user turn's text; the system prompt and earlier turns are left out.

    Measured in docs/router.md: prepending a shared system prompt or earlier turns moved
    estimates towards the system prompt's own and lowered dev ranking quality.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _content_text(message.get("content"))
            if text.strip():
                return text
    # No user turn with text: fall back to whatever text the chat has, newest first.
    for message in reversed(messages):
        text = _content_text(message.get("content"))
        if text.strip():
            return text
    return ""
