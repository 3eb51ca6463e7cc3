"""Prompt-token counts for routing decisions (context fit, expected cost), in cl100k tokens."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import tiktoken

_PER_MESSAGE = 4  # role and separators, as OpenAI counts them


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
    total = 0
    for message in messages:
        total += _PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += len(encoding.encode_ordinary(content))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(encoding.encode_ordinary(part["text"]))
        for call in message.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments") or ""
            total += len(encoding.encode_ordinary(arguments))
    return total
