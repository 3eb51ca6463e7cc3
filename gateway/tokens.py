"""Prompt-token counts for routing decisions (context fit, expected cost), in cl100k tokens."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tiktoken

_PER_MESSAGE = 4  # role and separators, as OpenAI counts them
INLINE_COUNT_CHARS = 32_000  # longer prompts are counted off the event loop


@functools.cache
def _encoding() -> tiktoken.Encoding:
    # tiktoken downloads its BPE files unless pointed at a copy; litellm ships one.
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    return tiktoken.get_encoding("cl100k_base")


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """cl100k tokens of the text in the messages (images and files are not counted)."""
    encoding = _encoding()
    return _PER_MESSAGE * len(messages) + sum(
        len(encoding.encode_ordinary(text)) for text in _texts(messages)
    )


async def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """prompt_tokens from the event loop: a long prompt is counted in a worker thread.

    Counting takes about 0.1 ms per 1,000 characters, so a 4 MB prompt counted on the loop
    would stall every other request for 0.4 s; a short one is not worth a thread hop.
    """
    if sum(len(text) for text in _texts(messages)) <= INLINE_COUNT_CHARS:
        return prompt_tokens(messages)
    return await asyncio.to_thread(prompt_tokens, messages)


def _texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    """Every text the prompt-token count covers: contents, text parts, tool-call arguments."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]
        for call in message.get("tool_calls") or ():
            yield (call.get("function") or {}).get("arguments") or ""
