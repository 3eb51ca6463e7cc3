"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic adapter on the pipeline.

The Anthropic body is validated and translated into the internal chat request
(gateway/anthropic/), served by the same pipeline as /v1/chat/completions (router, policy,
cache, ledger: one team budget covers both APIs), and the outcome rendered back as an
Anthropic message, event stream or error. Plain Starlette routes, as the OpenAI one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    MessageStream,
    chat_body,
    chat_messages,
    error_body,
    message,
    usage,
)
from gateway.anthropic.schemas import PromptRequest, turn_problem
from gateway.auth import bearer_token
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UpstreamBadRequest,
    UpstreamError,
)
from gateway.http import json_response, read_json, request_id
from gateway.limits import check_chat_shape
from gateway.native import NativeRequest
from gateway.pipeline import (
    Answer,
    Inbound,
    Outcome,
    Refused,
    Replay,
    Stream,
    StreamEvent,
    run,
)
from gateway.providers import AnthropicHTTPProvider
from gateway.schemas import ChatRequest
from gateway.settings import ServerSettings
from gateway.state import gateway_of
from gateway.tokens import count_prompt_tokens, prompt_tokens
from gateway.usage import count_usage

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("rightsize.anthropic")

# Fields of Anthropic's API that an OpenAI-format deployment has no faithful translation for:
# sent as they are to an Anthropic-format deployment, refused by name by any other
# (gateway/pipeline/attempts.py), not answered as if they had been applied.
_UNTRANSLATABLE = {
    "top_k": "OpenAI-format deployments have no top_k sampling",
    "container": "containers run only on Anthropic's servers",
    "mcp_servers": "MCP servers are called only by Anthropic's servers",
    "context_management": "context management runs only on Anthropic's servers",
}
_PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A messages body as read: the schema's view, its translation, and the body as sent."""

    anthropic: MessagesRequest
    chat: ChatRequest
    native: NativeRequest


async def messages(request: Request) -> Response:
    gateway = gateway_of(request)
    server = gateway.settings.server
    parsed: list[_Parsed] = []  # for rendering the answer

    async def read() -> ChatRequest:
        body = await read_json(request, server, _native_body)
        anthropic, chat = parse_messages_request(body, server)
        native = NativeRequest(
            api="anthropic",
            body=body,
            headers={h: v for h in _PASSED_HEADERS if (v := request.headers.get(h))},
            native_only=tuple(native_only(body)),
        )
        parsed.append(_Parsed(anthropic, chat, native))
        return chat

    inbound = Inbound(
        request_id=request_id(request),
        token=bearer_token(request.headers),
        headers=request.headers,
        read=read,
        api="anthropic",
        native=lambda: parsed[0].native,
    )
    outcome = await run(gateway, inbound)
    if isinstance(outcome, Refused):
        return error_response(outcome.error, outcome.request_id)
    anthropic, chat = parsed[0].anthropic, parsed[0].chat  # only requests read are answered
    estimate = 0
    if isinstance(outcome, Stream):
        # message_start's input tokens, before the upstream has counted: the router's count.
        estimate = await count_prompt_tokens(chat.upstream_payload()["messages"])
    return render(outcome, anthropic, estimate)


async def count_tokens(request: Request) -> Response:
    """The prompt's input tokens as the gateway counts them, without calling any model."""
    gateway = gateway_of(request)
    rid = request_id(request)
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        raw = await read_json(request, gateway.settings.server, _native_body)
        body = parse_count_tokens_request(raw, gateway.settings.server)
        policy = gateway.policy
        if body.model not in policy.names():
            raise NotFound(f"The model {body.model!r} does not exist", param="model")
        deployment = gateway.catalog.get(body.model)
        # A pinned model is checked here; `auto` and tiers are narrowed to the key's models
        # when a request is routed, and counting routes nothing.
        if deployment is not None and not key.may_use(body.model, policy.tier_of(body.model)):
            raise PermissionDenied(f"This key may not use model {body.model!r}", param="model")
        native = gateway.native(deployment, "anthropic") if deployment is not None else None
        if isinstance(native, AnthropicHTTPProvider) and deployment is not None:
            # An Anthropic-format deployment counts for itself, as the client would be told.
            headers = {h: v for h in _PASSED_HEADERS if (v := request.headers.get(h))}
            try:
                tokens = await native.count_tokens(deployment, raw, headers)
                return json_response({"input_tokens": tokens}, headers={"x-request-id": rid})
            except UpstreamBadRequest:
                raise
            except UpstreamError as exc:
                # A count is advice: the upstream down, the local tokenizer's count instead.
                log.warning("count_tokens: %s; counting locally", exc.message)
        counted = chat_messages(body)
        if body.tools:
            # Tool definitions are part of the prompt: counted as their JSON text.
            tools = [t.model_dump(mode="json", exclude_none=True) for t in body.tools]
            counted.append({"role": "system", "content": orjson.dumps(tools).decode()})
        if deployment is None:
            # `auto` or a tier: the model is chosen per request, so the router's own count
            # (cl100k), which routing and budget holds use.
            tokens = await asyncio.to_thread(prompt_tokens, counted)
        else:
            usage = await asyncio.to_thread(count_usage, deployment.model, counted, "")
            tokens = usage.prompt_tokens
    except GatewayError as exc:
        return error_response(exc, rid)
    return json_response({"input_tokens": tokens}, headers={"x-request-id": rid})


def _native_body(body: Any, _: ServerSettings) -> dict[str, Any]:
    """The body as sent, checked only to be an object: the schema's checks follow."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body


def native_only(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The body's fields (name, why) that only an Anthropic-format deployment can serve."""
    found = [(f, why) for f, why in _UNTRANSLATABLE.items() if body.get(f) is not None]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        found.append(
            (
                "thinking",
                "extended thinking is Anthropic's; OpenAI-format deployments "
                'are sent none: send {"type": "disabled"} or leave it out',
            )
        )
    output = body.get("output_config")
    if isinstance(output, dict) and output.get("effort") is not None:
        found.append(("output_config.effort", "the routed model may not reason; leave it out"))
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            found.append(
                (
                    f"tools.{i}.type",
                    f"server tools ({kind!r}) run only on Anthropic's "
                    "servers; OpenAI-format deployments serve client tools",
                )
            )
    return found


def _translatable(body: dict[str, Any]) -> dict[str, Any]:
    """The body without its Anthropic-only fields: what the schema checks and the translation
    carries (the fields themselves go as they are to Anthropic-format deployments)."""
    body = {k: v for k, v in body.items() if k not in _UNTRANSLATABLE}
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        # Checked for its shape here: an Anthropic-format deployment gets it as it is.
        if thinking.get("type") not in ("enabled", "adaptive"):
            raise InvalidRequest(
                "thinking.type: one of 'enabled', 'adaptive' or 'disabled'", param="thinking.type"
            )
        del body["thinking"]
    output = body.get("output_config")
    if isinstance(output, dict) and output.get("effort") is not None:
        body["output_config"] = {k: v for k, v in output.items() if k != "effort"}
    tools = body.get("tools")
    if isinstance(tools, list):
        kept = [t for t in tools if not isinstance(t, dict) or t.get("type") in (None, "custom")]
        if len(kept) != len(tools):
            body["tools"] = kept or None
    return body


def parse_messages_request(
    body: Any, server: ServerSettings
) -> tuple[MessagesRequest, ChatRequest]:
    """Validate an Anthropic body and translate it; the first problem is a 400 naming the field."""
    anthropic = _validated(MessagesRequest, body, server)
    try:
        return anthropic, ChatRequest.from_body(chat_body(anthropic))
    except ValidationError as exc:
        # What translates cleanly validates: this names what did not (say, a tool's name).
        error = exc.errors()[0]
        raise InvalidRequest(f"Invalid request: {error['msg']}") from None


def parse_batch_params(body: Any, server: ServerSettings) -> ChatRequest:
    """A Message Batches request's params, as the chat request the batch driver routes: the
    translation of /v1/messages; fields only an Anthropic-format deployment serves are refused
    (a batch line goes through the chat translation, whichever deployment it is routed to)."""
    if isinstance(body, dict):
        for field, why in native_only(body):
            raise InvalidRequest(f"{field}: not served in a batch ({why})", param=field)
    return parse_messages_request(body, server)[1]


def parse_count_tokens_request(body: Any, server: ServerSettings) -> CountTokensRequest:
    return _validated(CountTokensRequest, body, server)


def _validated(model: type[M], body: Any, server: ServerSettings) -> M:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    # Anthropic-only fields are left to the deployment that serves them (native_only); an
    # explicit null asks for nothing, as Anthropic's API accepts it.
    body = _translatable(body)
    # The same bounds as the OpenAI body (messages, content blocks, tools, nesting), before
    # validation: they bound what validating costs.
    check_chat_shape(body, server)
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:
        # A union (string or blocks, one block type or another) reports one error per branch:
        # the deepest names the actual mismatch ("messages.1.content.0.tool_use.id").
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = _field_path(body, error["loc"])
        raise InvalidRequest(f"{param}: {error['msg']}", param=param) from None
    problem = turn_problem(validated) if isinstance(validated, PromptRequest) else None
    if problem is not None:
        raise InvalidRequest(f"{problem[0]}: {problem[1]}", param=problem[0])
    return validated


def _field_path(body: Any, loc: tuple[int | str, ...]) -> str:
    """The error's place in the body as the client wrote it ("messages.0.content.1.source"):
    pydantic's location also names the union branch it tried ("list[…]", a block's tag), which
    is no field of the body; a part the body lacks is kept only last (a missing field)."""
    kept: list[str] = []
    node = body
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i < len(loc) - 1 or _is_branch(part):
            continue
        kept.append(str(part))
    return ".".join(kept)


def _is_branch(part: int | str) -> bool:
    """A union branch in pydantic's location: a type ("str", "list[…]"), never a field name."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def render(outcome: Outcome, anthropic: MessagesRequest, input_tokens: int = 0) -> Response:
    """The pipeline's outcome in Anthropic's wire format; `input_tokens` is message_start's
    estimate for a live stream."""
    if isinstance(outcome, Refused):
        return error_response(outcome.error, outcome.request_id)
    model = outcome.headers.get("x-rightsize-model") or anthropic.model
    stops = anthropic.stop_sequences
    if isinstance(outcome, Answer):
        # An Anthropic-format deployment's own message, as it came; else the translation.
        answer = outcome.native or message(outcome.completion, stops, model)
        response = json_response(answer, headers=outcome.headers)
        if outcome.after is not None:
            response.background = BackgroundTask(outcome.after)
        return response
    headers = {**outcome.headers, "cache-control": "no-cache"}
    if isinstance(outcome, Replay):
        # A stored answer knows its usage already: message_start reports the real count.
        reported = next((c["usage"] for c in outcome.chunks if c.get("usage")), None)
        encoder = MessageStream(model, stops, usage(reported)["input_tokens"])
        body = b"".join(encoder.feed(chunk) for chunk in outcome.chunks) + encoder.end()
        return Response(body, media_type="text/event-stream", headers=headers)
    assert isinstance(outcome, Stream)
    encoder = MessageStream(model, stops, input_tokens)
    return StreamingResponse(
        anthropic_events(outcome.events, encoder), media_type="text/event-stream", headers=headers
    )


async def anthropic_events(
    events: AsyncGenerator[StreamEvent, None], encoder: MessageStream
) -> AsyncIterator[bytes]:
    """The pipeline's stream events as Anthropic server-sent events."""
    # Closed explicitly when the client leaves, as the OpenAI adapter does (gateway/api/chat.py).
    async with aclosing(events):
        async for item in events:
            if isinstance(item, GatewayError):
                yield encoder.error(item)
            elif isinstance(item, dict):
                yield encoder.feed(item)
            else:
                yield encoder.end()


def error_response(exc: GatewayError, rid: str | None = None) -> Response:
    headers = exc.headers()
    if rid:
        headers["x-request-id"] = rid
    return json_response(error_body(exc, rid), status=exc.status, headers=headers)
