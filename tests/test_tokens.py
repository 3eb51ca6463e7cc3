"""Prompt-token counts for routing: what is counted, and that long prompts leave the loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway import tokens


def _cl100k(text: str) -> int:
    return len(tokens._encoding().encode_ordinary(text))


def test_prompt_tokens_count_every_text_and_four_per_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": '{"city": "Paris"}'}}],
        },
    ]
    texts = ["Be brief.", "What is in this picture?", '{"city": "Paris"}']
    assert tokens.prompt_tokens(messages) == 3 * 4 + sum(map(_cl100k, texts))


@pytest.mark.parametrize(
    ("chars", "off_the_loop"), [(200, False), (tokens.INLINE_COUNT_CHARS + 1, True)]
)
def test_a_long_prompt_is_counted_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch, chars: int, off_the_loop: bool
) -> None:
    counted_in: list[threading.Thread] = []
    real = tokens.prompt_tokens

    def recording(messages: list[dict[str, Any]]) -> int:
        counted_in.append(threading.current_thread())
        return real(messages)

    monkeypatch.setattr(tokens, "prompt_tokens", recording)
    messages = [{"role": "user", "content": "x" * chars}]

    async def count() -> tuple[int, threading.Thread]:
        return await tokens.count_prompt_tokens(messages), threading.current_thread()

    n, loop_thread = asyncio.run(count())
    assert n == real(messages)
    assert (counted_in[0] is not loop_thread) is off_the_loop
