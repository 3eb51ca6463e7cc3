"""Token counts: what routing counts, that long prompts leave the loop, and that usage counted
without litellm is litellm's count exactly."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.llm import litellm


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


# Usage counted without litellm must be litellm.token_counter's count exactly: holds and spend
# rows may not change with whether litellm happens to be loaded.
COUNTED_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "gpt-3.5-turbo",
    "gpt-35-turbo",  # an Azure spelling litellm renames
    "openai/fake-ok",  # unknown to litellm's map: counted as gpt-3.5-turbo
]
# Special tokens, spaces and digits, where chunking and BPE merges are easiest to get wrong.
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "<|endoftext|>", "<|im_start|>", "\n\n", "1234567890", "é漢字🙂"]),
    # Past litellm's 1,024-character encode chunks, with tokens straddling the boundary.
    st.builds(
        lambda word, n: word * n, st.sampled_from(["ab ", "x", "  ", "🙂a"]), st.integers(300, 1500)
    ),
)
_IMAGE = st.one_of(
    st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,AAAA"]),
    st.fixed_dictionaries(
        {"url": st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,AAAA"])},
        optional={"detail": st.sampled_from(["low", "high", "auto"])},
    ),
)
_PART = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, _TEXT),
    st.builds(lambda image: {"type": "image_url", "image_url": image}, _IMAGE),
    _TEXT,  # a bare string in a content list
)
_CALL = st.builds(
    lambda name, arguments: {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    },
    _TEXT,
    _TEXT,
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
    optional={
        "content": st.one_of(st.none(), _TEXT, st.lists(_PART, max_size=4)),
        "name": _TEXT,
        "tool_calls": st.lists(_CALL, max_size=2),
        "function_call": st.builds(lambda arguments: {"name": "f", "arguments": arguments}, _TEXT),
        "tool_call_id": _TEXT,
        "refusal": st.one_of(st.none(), _TEXT),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(COUNTED_MODELS),
    messages=st.lists(_MESSAGE, max_size=5),
    completion=_TEXT,
)
def test_usage_is_counted_without_litellm_exactly_as_litellm_counts_it(
    model: str, messages: list[dict[str, Any]], completion: str
) -> None:
    lib = litellm()
    assert tokens.chat_tokens(model, messages) == lib.token_counter(
        model=model, messages=messages, use_default_image_token_count=True
    )
    assert tokens.text_tokens(model, completion) == lib.token_counter(model=model, text=completion)


def test_a_text_past_litellms_exact_limit_is_extrapolated_as_litellm_does() -> None:
    # Sampled, not encoded whole: a text whose tokens vary along it shows a different count.
    text = "".join(f"{i} word{'s' * (i % 7)} " for i in range(330_000))
    assert len(text) > 4_000_000
    assert tokens.text_tokens("gpt-4o", text) == litellm().token_counter(model="gpt-4o", text=text)


@pytest.mark.parametrize(
    ("model", "messages"),
    [
        ("claude-sonnet-4-5", [{"role": "user", "content": "Hi"}]),  # Anthropic's tokenizer
        ("groq/llama-3.1-8b-instant", [{"role": "user", "content": "Hi"}]),  # Llama's
        (
            "gpt-4o",
            [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}],
                }
            ],
        ),
        (
            "gpt-4o",
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                }
            ],
        ),
        (
            "gpt-4o",
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
        ),
    ],
)
def test_what_tiktoken_cannot_count_as_litellm_is_left_to_litellm(
    model: str, messages: list[dict[str, Any]]
) -> None:
    assert tokens.chat_tokens(model, messages) is None


def test_litellms_counting_settings_in_the_environment_leave_the_count_to_litellm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEFAULT_IMAGE_TOKEN_COUNT", "100")
    assert tokens.text_tokens("gpt-4o", "Hello") is None
