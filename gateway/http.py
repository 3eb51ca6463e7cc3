"""HTTP helpers shared by the routes: request ids, body limits, error and SSE encoding."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(request: Request) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh one."""
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else "req_" + uuid.uuid4().hex


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing anything over `limit` bytes before reading all of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes")
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None


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
