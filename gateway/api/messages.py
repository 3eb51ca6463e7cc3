"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic adapter on the pipeline.

The Anthropic body is validated and translated into the internal chat request
(gateway/anthropic/), served by the same pipeline as /v1/chat/completions (router, policy,
cache, ledger: one team budget covers both APIs), and the outcome rendered back as an
Anthropic message, event stream or error. Plain Starlette routes, as the OpenAI one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
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
from gateway.auth import bearer_token
from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from gateway.http import json_response, read_json, request_id
from gateway.limits import check_chat_shape
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
from gateway.schemas import ChatRequest
from gateway.settings import ServerSettings
from gateway.state import Gateway
from gateway.tokens import count_prompt_tokens, prompt_tokens
from gateway.usage import count_usage

M = TypeVar("M", bound=BaseModel)

# Fields of Anthropic's API that an OpenAI-format deployment has no faithful translation for:
# refused by name, not answered as if they had been applied.
_UNTRANSLATABLE = {
    "top_k": "OpenAI-format deployments have no top_k sampling",
    "container": "containers run only on Anthropic's servers",
    "mcp_servers": "MCP servers are called only by Anthropic's servers",
    "context_management": "context management runs only on Anthropic's servers",
}


async def messages(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    server = gateway.settings.server
    parsed: list[tuple[MessagesRequest, ChatRequest]] = []  # for rendering the answer

    async def read() -> ChatRequest:
        anthropic, chat = await read_json(request, server, parse_messages_request)
        parsed.append((anthropic, chat))
        return chat

    inbound = Inbound(
        request_id=request_id(request),
        token=bearer_token(request.headers),
        headers=request.headers,
        read=read,
    )
    outcome = await run(gateway, inbound)
    if isinstance(outcome, Refused):
        return error_response(outcome.error, outcome.request_id)
    anthropic, chat = parsed[0]  # the pipeline answers only requests it has read
    estimate = 0
    if isinstance(outcome, Stream):
        # message_start's input tokens, before the upstream has counted: the router's count.
        estimate = await count_prompt_tokens(chat.upstream_payload()["messages"])
    return render(outcome, anthropic, estimate)


async def count_tokens(request: Request) -> Response:
    """The prompt's input tokens as the gateway counts them, without calling any model."""
    gateway: Gateway = request.app.state.gateway
    rid = request_id(request)
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        body = await read_json(request, gateway.settings.server, parse_count_tokens_request)
        policy = gateway.policy
        if body.model not in policy.names():
            raise NotFound(f"The model {body.model!r} does not exist", param="model")
        deployment = gateway.catalog.get(body.model)
        # A pinned model is checked here; `auto` and tiers are narrowed to the key's models
        # when a request is routed, and counting routes nothing.
        if deployment is not None and not key.may_use(body.model, policy.tier_of(body.model)):
            raise PermissionDenied(f"This key may not use model {body.model!r}", param="model")
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


def parse_count_tokens_request(body: Any, server: ServerSettings) -> CountTokensRequest:
    return _validated(CountTokensRequest, body, server)


def _validated(model: type[M], body: Any, server: ServerSettings) -> M:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    for field, why in _UNTRANSLATABLE.items():
        if body.get(field) is not None:
            raise InvalidRequest(f"{field}: not supported by this gateway ({why})", param=field)
    # An explicit null asks for nothing: accepted, as Anthropic's API accepts it.
    body = {k: v for k, v in body.items() if v is not None or k not in _UNTRANSLATABLE}
    output = body.get("output_config")
    if isinstance(output, dict) and output.get("effort") is not None:
        raise InvalidRequest(
            "output_config.effort: not supported by this gateway yet (the routed model may not "
            "reason); leave it out",
            param="output_config.effort",
        )
    tools = body.get("tools")
    # Not a list: left to the schema's 400 below; iterated here it was a 500.
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise InvalidRequest(
                f"tools.{i}.type: server tools ({kind!r}) run only on Anthropic's servers; this "
                "gateway serves client tools (name, description, input_schema)",
                param=f"tools.{i}.type",
            )
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        raise InvalidRequest(
            "thinking: extended thinking is not supported by this gateway yet; send "
            '{"type": "disabled"} or leave it out',
            param="thinking",
        )
    # The same bounds as the OpenAI body (messages, content blocks, tools, nesting), before
    # validation: they bound what validating costs.
    check_chat_shape(body, server)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # A union (string or blocks, one block type or another) reports one error per branch:
        # the deepest names the actual mismatch ("messages.1.content.0.tool_use.id").
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = _field_path(body, error["loc"])
        raise InvalidRequest(f"{param}: {error['msg']}", param=param) from None


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
        response = json_response(message(outcome.completion, stops, model), headers=outcome.headers)
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
