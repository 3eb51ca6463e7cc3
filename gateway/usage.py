"""Token usage: read from the upstream, or counted with the tokenizer when it sends none."""

from __future__ import annotations

import logging
from typing import Any

from gateway import tokens
from gateway.llm import litellm
from policies import Usage

log = logging.getLogger("rightsize.usage")


def usage_from(payload: dict[str, Any] | None) -> Usage | None:
    """Usage from an OpenAI-shaped `usage` object, or None if absent or empty."""
    if not payload:
        return None
    details = payload.get("prompt_tokens_details") or {}
    # Anthropic's cache writes: litellm reports them in both places, the gateway's own
    # translation (gateway/anthropic) in the details.
    written = details.get("cache_creation_tokens") or payload.get("cache_creation_input_tokens")
    breakdown = details.get("cache_creation_token_details") or {}
    try:
        usage = Usage(
            prompt_tokens=int(payload.get("prompt_tokens") or 0),
            completion_tokens=int(payload.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            cache_creation_tokens=int(written or 0),
            cache_creation_1h_tokens=int(breakdown.get("ephemeral_1h_input_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None
    # litellm reports all-zero usage when the upstream sent none; no real call costs 0 tokens.
    return usage if usage.total_tokens > 0 else None


def count_usage(model: str, messages: list[dict[str, Any]], completion_text: str) -> Usage:
    """Count prompt and completion tokens locally (the model's tokenizer, else cl100k).

    The numbers are litellm.token_counter's; gateway.tokens reproduces them with tiktoken where
    it can, so that a gateway without litellm deployments never waits seconds to import it.
    """
    prompt = tokens.chat_tokens(model, messages)
    completion = tokens.text_tokens(model, completion_text) if completion_text else 0
    if prompt is not None and completion is not None:
        return Usage(prompt_tokens=prompt, completion_tokens=completion)
    return _count_with_litellm(model, messages, completion_text)


def _count_with_litellm(model: str, messages: list[dict[str, Any]], completion_text: str) -> Usage:
    lib = litellm()
    try:
        prompt = lib.token_counter(
            model=model, messages=messages, use_default_image_token_count=True
        )
        completion = lib.token_counter(model=model, text=completion_text) if completion_text else 0
    except Exception:
        log.warning("no tokenizer for %s; counting with cl100k_base", model, exc_info=True)
        prompt = lib.token_counter(messages=messages, use_default_image_token_count=True)
        completion = lib.token_counter(text=completion_text) if completion_text else 0
    return Usage(prompt_tokens=int(prompt), completion_tokens=int(completion))


def completion_text(message: dict[str, Any]) -> str:
    """The text a message or stream delta carries, tool-call arguments included."""
    parts = [message.get("content") or "", message.get("refusal") or ""]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(function.get("name") or "")
        parts.append(function.get("arguments") or "")
    return "".join(p for p in parts if isinstance(p, str))
