"""HTTP helpers shared by the routes: request ids, body limits, error and SSE encoding."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge
from gateway.ids import unique_hex
from gateway.settings import ServerSettings

T = TypeVar("T")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(request: Request) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh one."""
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else "req_" + unique_hex()


class RequestTimedOut(GatewayError):
    """408: the client did not send its request in time (or hung up while sending it)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"connection": "close"}


async def read_json(
    request: Request, server: ServerSettings, parse: Callable[[Any, ServerSettings], T]
) -> T:
    """The body, decoded and handed to `parse`, refusing anything over server.max_body_bytes
    before reading all of it. A large body is decoded and parsed in a worker thread: both take
    time in proportion to its size, which on the event loop would stall every other request."""
    limit = server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes")
    except ClientDisconnect:
        # The client went away, or the server cut it off for sending too slowly
        # (server.body_timeout_s): nobody reads this answer, but the spend log does.
        raise RequestTimedOut(
            f"The request body did not arrive within {server.body_timeout_s:g}s "
            "(server.body_timeout_s), or the client closed the connection"
        ) from None
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object")
    if len(body) >= server.thread_parse_bytes:
        return await asyncio.to_thread(_decode_and_parse, bytes(body), server, parse)
    return _decode_and_parse(body, server, parse)


def _decode_and_parse(
    body: bytes | bytearray, server: ServerSettings, parse: Callable[[Any, ServerSettings], T]
) -> T:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    return parse(decoded, server)


def json_response(
    content: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def error_response(exc: GatewayError, request_id: str | None = None) -> Response:
    headers = exc.headers()
    if request_id:
        headers["x-request-id"] = request_id
    return json_response(exc.body(), status=exc.status, headers=headers)


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
