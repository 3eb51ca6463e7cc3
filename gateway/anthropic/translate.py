"""Anthropic Messages <-> the internal (OpenAI-shaped) chat request and completion.

The pipeline speaks one shape, OpenAI's chat completions (DESIGN.md: both APIs map to one
internal ChatRequest); an Anthropic request is translated into it on the way in and the
completion back on the way out, for the OpenAI-format deployments the gateway serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.anthropic.schemas import (
    ImageBlock,
    MessageParam,
    MessagesRequest,
    PromptRequest,
    TextBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.ids import unique_hex

# OpenAI finish_reason -> Anthropic stop_reason ("stop" is end_turn or stop_sequence, below).
_STOP_REASONS = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def chat_body(request: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat-completions body that asks an OpenAI-format upstream the same thing."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        # OpenAI's current name: its reasoning models (the o-series, the default `reasoning`
        # tier) refuse `max_tokens`, and litellm maps this one for the providers it calls.
        "max_completion_tokens": request.max_tokens,
    }
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    if request.tool_choice is not None:
        body.update(_tool_choice(request.tool_choice, bool(request.tools)))
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    output_format = request.output_config.format if request.output_config else None
    if output_format is not None:
        body["response_format"] = {
            "type": "json_schema",
            # Anthropic's structured output has no name; OpenAI's requires one.
            "json_schema": {"name": "output", "schema": output_format.schema_, "strict": True},
        }
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    if request.stream:
        # The usage chunk is what message_delta reports, so it is always asked for.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def chat_messages(request: PromptRequest) -> list[dict[str, Any]]:
    """The system prompt and messages as OpenAI chat messages."""
    messages: list[dict[str, Any]] = []
    if isinstance(request.system, str):
        if request.system:
            messages.append({"role": "system", "content": request.system})
    elif request.system:
        messages.append({"role": "system", "content": [_text(b) for b in request.system]})
    for message in request.messages:
        if message.role == "assistant":
            messages.append(_assistant(message))
        else:
            messages.extend(_user(message))
    return messages


def _user(message: MessageParam) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages (OpenAI wants them right after the
    assistant's tool calls), then the rest as one user message."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            content, images = _tool_result(block)
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
            # A tool message carries text only: its images follow in the user message.
            parts.extend(images)
        elif isinstance(block, TextBlock):
            parts.append(_text(block))
        elif isinstance(block, ImageBlock):
            parts.append(_image(block))
        # tool_use and thinking blocks belong to assistant turns; in a user turn they carry
        # nothing the model could read, as Anthropic's API would refuse them: dropped.
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant(message: MessageParam) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(_text(block))
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": _json(block.input)},
                }
            )
        # Thinking blocks are the earlier answer's reasoning, which an OpenAI-format model
        # neither takes back nor can verify the signature of: dropped.
    turn: dict[str, Any] = {"role": "assistant", "content": texts or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _tool_result(block: ToolResultBlock) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    content = block.content
    if content is None:
        text: str | list[dict[str, Any]] = ""
        images: list[dict[str, Any]] = []
    elif isinstance(content, str):
        text, images = content, []
    else:
        text = [_text(b) for b in content if isinstance(b, TextBlock)]
        images = [_image(b) for b in content if isinstance(b, ImageBlock)]
    if block.is_error:
        # OpenAI's tool message has no error flag: the model is told in the text instead.
        prefix = "Error from the tool"
        text = f"{prefix}: {text}" if isinstance(text, str) else [_plain(prefix + ":"), *text]
    return text, images


def _text(block: TextBlock) -> dict[str, Any]:
    return _plain(block.text)


def _plain(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    if source.type == "base64":
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice, has_tools: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if choice.type == "tool":
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name or ""}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use and has_tools:
        fields["parallel_tool_calls"] = False
    return fields


def message_id() -> str:
    return "msg_" + unique_hex()


def message(
    completion: dict[str, Any], stop_sequences: Sequence[str] | None, model: str
) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    for text in (reply.get("content"), reply.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        elif isinstance(text, list):  # content parts, from some OpenAI-compatible servers
            joined = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
            if joined:
                content.append({"type": "text", "text": joined})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + unique_hex(),
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = stop(choice, stop_sequences)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(completion.get("usage")),
    }


def stop(choice: dict[str, Any], stop_sequences: Sequence[str] | None) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for an OpenAI choice.

    OpenAI's "stop" covers both a natural end and a stop sequence without saying which; the
    sequence is known only where the upstream names it in `stop_reason` (vLLM, SGLang do).
    """
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in (stop_sequences or ()):
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish or "", "end_turn"), None


def usage(payload: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage as Anthropic's: input_tokens excludes the tokens read from the cache."""
    payload = payload or {}
    prompt = int(payload.get("prompt_tokens") or 0)
    cached = int((payload.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(payload.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's JSON arguments as the tool_use block's input object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        # Truncated arguments (max_tokens hit mid-call): kept for the client to see.
        return {"_raw_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
