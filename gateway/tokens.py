"""Token counts with tiktoken: prompts for routing decisions (context fit, expected cost), in
cl100k tokens, and usage counted exactly as litellm.token_counter counts it, without litellm."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from gateway.llm import model_cost_table

_PER_MESSAGE = 4  # role and separators, as OpenAI counts them
INLINE_COUNT_CHARS = 32_000  # longer prompts are counted off the event loop


@functools.cache
def _tiktoken(name: str) -> tiktoken.Encoding:
    # tiktoken downloads its BPE files unless pointed at a copy; litellm ships one (cl100k_base,
    # o200k_base, p50k_base), found without importing litellm.
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    return tiktoken.get_encoding(name)


def _encoding() -> tiktoken.Encoding:
    return _tiktoken("cl100k_base")


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """cl100k tokens of the text in the messages (images and files are not counted)."""
    encoding = _encoding()
    return _PER_MESSAGE * len(messages) + sum(
        len(encoding.encode_ordinary(text)) for text in _texts(messages)
    )


def texts_tokens(texts: list[str]) -> int:
    """cl100k tokens of plain texts (an embeddings request's inputs), no message overhead."""
    encoding = _encoding()
    return sum(len(encoding.encode_ordinary(text)) for text in texts)


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


# Usage counted as litellm.token_counter counts it (litellm 1.106,
# litellm/litellm_core_utils/token_counter.py), so that spend rows and holds are the same numbers
# whether or not litellm is loaded; importing litellm takes seconds, and a gateway with only
# openai_http deployments has no other use for it. Only the cases reproduced exactly are counted
# here (tests/test_tokens.py checks equality against litellm); for the rest these return None and
# the caller asks litellm: models litellm counts with a HuggingFace tokenizer (Anthropic, Cohere
# command-r, Llama), content parts other than text and image_url, non-string tool-call arguments,
# and litellm's counting knobs set in the environment.
_CHUNK_CHARS = 1024  # TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS: litellm encodes long texts in chunks
_MAX_EXACT_CHARS = 4_000_000  # TOKEN_COUNTER_MAX_EXACT_CHARS: longer texts are extrapolated
_SAMPLES = 16  # EXTRAPOLATION_SAMPLES
_IMAGE_TOKENS = 250  # DEFAULT_IMAGE_TOKEN_COUNT: an image counted without fetching it
_REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
_LITELLM_KNOBS = (
    "TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS",
    "TOKEN_COUNTER_MAX_EXACT_CHARS",
    "DEFAULT_IMAGE_TOKEN_COUNT",
    "CUSTOM_TIKTOKEN_CACHE_DIR",
)
# litellm.azure_llms: Azure's spellings, which litellm renames before choosing an encoding.
_AZURE_NAMES = frozenset(
    {
        "gpt-35-turbo",
        "gpt-35-turbo-16k",
        "gpt-35-turbo-instruct",
        "azure/gpt-41",
        "azure/gpt-41-mini",
        "azure/gpt-41-nano",
    }
)
_BUNDLED_ENCODINGS = frozenset({"cl100k_base", "o200k_base"})
_IMAGE_DETAILS = ("low", "high", "auto")


@dataclass(frozen=True)
class _Counting:
    """How litellm counts a model's chat messages when it counts them with tiktoken."""

    encoding: tiktoken.Encoding
    per_message: int
    per_name: int

    def text(self, text: str) -> int:
        if len(text) <= _MAX_EXACT_CHARS:
            return self._chunked(text)
        # As litellm: 16 evenly spaced samples, 4M characters in all, scaled to the length.
        sample_chars = _MAX_EXACT_CHARS // _SAMPLES
        last_start = len(text) - sample_chars
        samples = [
            text[start : start + sample_chars]
            for start in (last_start * i // (_SAMPLES - 1) for i in range(_SAMPLES))
        ]
        counted = sum(self._chunked(sample) for sample in samples)
        return round(counted * len(text) / sum(len(sample) for sample in samples))

    def _chunked(self, text: str) -> int:
        return sum(
            len(self.encoding.encode(text[start : start + _CHUNK_CHARS], disallowed_special=()))
            for start in range(0, len(text), _CHUNK_CHARS)
        )


def chat_tokens(model: str, messages: list[dict[str, Any]]) -> int | None:
    """litellm.token_counter(model, messages, use_default_image_token_count=True), or None
    where reproducing it would take litellm."""
    counting = _counting(model)
    if counting is None:
        return None
    total = _REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            return None
        total += counting.per_message
        for key, value in message.items():
            counted: int | None = 0
            if value is None:
                continue
            if key == "tool_calls":
                counted = _tool_call_tokens(counting, value)
            elif key == "function_call":
                counted = _arguments_tokens(counting, value)
            elif isinstance(value, str):
                counted = counting.text(value) + (counting.per_name if key == "name" else 0)
            elif key == "content" and isinstance(value, list):
                counted = _parts_tokens(counting, value)
            elif key == "search_results" and isinstance(value, list):
                return None
            # litellm skips any other value (numbers, objects) without counting it.
            if counted is None:
                return None
            total += counted
    return total


def text_tokens(model: str, text: str) -> int | None:
    """litellm.token_counter(model, text=text), or None where reproducing it would take litellm."""
    counting = _counting(model)
    return None if counting is None else counting.text(text)


def _counting(model: str) -> _Counting | None:
    if any(knob in os.environ for knob in _LITELLM_KNOBS):
        return None  # litellm reads these at import; its own count honours them
    return _model_counting(model)


@functools.cache
def _model_counting(model: str) -> _Counting | None:
    # litellm's model sets (open_ai_chat_completion_models, anthropic_models, cohere_models) are
    # the keys of its model map with that litellm_provider.
    entry = model_cost_table().get(model)
    provider = entry.get("litellm_provider") if isinstance(entry, Mapping) else None
    lower = model.lower()
    if (
        (provider == "cohere" and "command-r" in model)
        or (provider == "anthropic" and "claude-3" not in model)
        or any(family in lower for family in ("llama-2", "replicate", "llama-3"))
    ):
        return None  # a HuggingFace tokenizer (litellm.utils.huggingface_tokenizer_kind)
    if model in _AZURE_NAMES:
        known = model.replace("-35", "-3.5")
    elif provider == "openai" and not (model.startswith("ft:") and model.count(":") <= 1):
        known = model
    else:
        known = "gpt-3.5-turbo"  # litellm counts every other model as gpt-3.5-turbo
    if "gpt-4o" in known:
        name = "o200k_base"
    else:
        try:
            name = tiktoken.encoding_name_for_model(known)
        except KeyError:
            name = "cl100k_base"
    if name not in _BUNDLED_ENCODINGS:
        return None
    if known == "gpt-3.5-turbo-0301":
        return _Counting(_tiktoken(name), per_message=4, per_name=-1)
    return _Counting(_tiktoken(name), per_message=3, per_name=1)


def _tool_call_tokens(counting: _Counting, calls: object) -> int | None:
    if not isinstance(calls, list):
        return None
    total = 0
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        counted = _arguments_tokens(counting, function)
        if counted is None:
            return None
        total += counted
    return total


def _arguments_tokens(counting: _Counting, function: object) -> int | None:
    """litellm counts only a call's arguments; it str()s any that are not a string."""
    if not isinstance(function, dict):
        return None
    arguments = function.get("arguments", "")
    return counting.text(arguments) if isinstance(arguments, str) else None


def _parts_tokens(counting: _Counting, parts: list[Any]) -> int | None:
    total = 0
    for part in parts:
        if isinstance(part, str):
            total += counting.text(part)
        elif not isinstance(part, dict):
            return None
        elif part.get("type") == "text" and isinstance(part.get("text", ""), str):
            total += counting.text(part.get("text", ""))
        elif part.get("type") == "image_url" and _is_countable_image(part.get("image_url")):
            total += _IMAGE_TOKENS
        else:
            return None  # documents, files, audio, and what litellm refuses
    return total


def _is_countable_image(image_url: object) -> bool:
    """What litellm counts as an image without raising: a URL and a known detail."""
    if isinstance(image_url, str):
        return bool(image_url.strip())
    if isinstance(image_url, dict):
        return image_url.get("detail", "auto") in _IMAGE_DETAILS and bool(image_url.get("url"))
    return False
