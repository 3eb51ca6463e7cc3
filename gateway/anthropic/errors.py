"""Gateway errors in Anthropic's error shape, with the same HTTP status.

The anthropic SDK picks its exception class by status and reads `error.type` and
`error.message`; an error after the stream began travels as an `error` event of this shape.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BudgetExceeded, GatewayError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    # A dependency of ours is down and `retry-after` says when to come back: the nearest of
    # Anthropic's kinds is its own "try again shortly".
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(error: GatewayError) -> str:
    return status_type(error.status)


def status_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (a batch result's error has only its status)."""
    return _TYPES.get(status, "api_error")


def error_body(error: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, plus what the gateway knows more:
    the budget a 429 refused on, and the request id."""
    detail: dict[str, Any] = {"type": error_type(error), "message": error.message}
    if isinstance(error, BudgetExceeded):
        detail["budget"] = error.refusal.detail
    body: dict[str, Any] = {"type": "error", "error": detail}
    if request_id:
        body["request_id"] = request_id
    return body
