"""POST /v1/chat/completions: the OpenAI adapter on the request pipeline.

It reads and validates the OpenAI body, runs the pipeline (gateway/pipeline/) and renders
the outcome as an OpenAI response, event stream or error. Mounted as a plain Starlette route
(gateway/openapi.py, DocumentedRoute): it takes the request and nothing else, so FastAPI's
per-request dependency and response layers would only cost time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.api.chat_jobs import deferred
from gateway.auth import bearer_token
from gateway.batches.jobs import wants_async
from gateway.errors import GatewayError, InvalidRequest
from gateway.http import SSE_DONE, error_response, json_response, read_json, request_id, sse
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
from gateway.state import gateway_of


async def chat_completions(request: Request) -> Response:
    if wants_async(request.headers):
        # Deferred to a one-line batch when its latency class allows (gateway/api/chat_jobs.py).
        answer = await deferred(request, parse_chat_request)
        if answer is not None:
            return answer
    gateway = gateway_of(request)
    server = gateway.settings.server

    async def read() -> ChatRequest:
        return await read_json(request, server, parse_chat_request)

    inbound = Inbound(
        request_id=request_id(request),
        token=bearer_token(request.headers),
        headers=request.headers,
        read=read,
    )
    return render(await run(gateway, inbound))


def parse_chat_request(body: Any, server: ServerSettings) -> ChatRequest:
    """Validate a decoded body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    check_chat_shape(body, server)
    try:
        return ChatRequest.from_body(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _dotted(error["loc"])
        raise InvalidRequest(f"Invalid value for {param!r}: {error['msg']}", param=param) from None


def render(outcome: Outcome) -> Response:
    """The pipeline's outcome in OpenAI's wire format."""
    if isinstance(outcome, Refused):
        return error_response(outcome.error, outcome.request_id)
    if isinstance(outcome, Answer):
        response = json_response(outcome.completion, headers=outcome.headers)
        if outcome.after is not None:
            response.background = BackgroundTask(outcome.after)
        return response
    headers = {**outcome.headers, "cache-control": "no-cache"}
    if isinstance(outcome, Replay):
        body = b"".join(sse(chunk) for chunk in outcome.chunks) + SSE_DONE
        return Response(body, media_type="text/event-stream", headers=headers)
    assert isinstance(outcome, Stream)
    return StreamingResponse(
        openai_events(outcome.events), media_type="text/event-stream", headers=headers
    )


async def openai_events(events: AsyncGenerator[StreamEvent, None]) -> AsyncIterator[bytes]:
    """The pipeline's stream events as OpenAI server-sent events."""
    # Closed explicitly when the client leaves: the relay's own clean-up (the upstream closed,
    # the partial answer charged) must not wait for the garbage collector.
    async with aclosing(events):
        async for event in events:
            if isinstance(event, GatewayError):
                yield sse(event.body())
            elif isinstance(event, dict):
                yield sse(event)
            else:
                yield SSE_DONE


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
