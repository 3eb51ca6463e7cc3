"""The answer to a path or method the gateway does not serve: what it does serve, in the shape
of the API the caller was speaking (Anthropic's under /v1/messages, else OpenAI's)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.anthropic import error_body as anthropic_error_body
from gateway.errors import GatewayError
from gateway.http import json_response

_ANTHROPIC_PREFIX = "/v1/messages"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


def supported_endpoints(routes: Iterable[BaseRoute]) -> list[str]:
    """The client API as served by this app ("POST /v1/chat/completions", ...), in its order."""
    endpoints = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/v1/") and route.methods:
            methods = sorted(m for m in route.methods if m != "HEAD")
            endpoints.append(f"{' '.join(methods)} {route.path}")
    return endpoints


def not_served(request: Request, status: int) -> Response:
    """404 for an unknown path, 405 for a known path with the wrong method."""
    path = request.url.path
    served = ", ".join(supported_endpoints(request.app.router.routes))
    error: GatewayError
    if status == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {path}. This gateway serves: {served}"
        )
    else:
        error = RouteNotFound(f"Unknown path {path}. This gateway serves: {served}")
    if path == _ANTHROPIC_PREFIX or path.startswith(_ANTHROPIC_PREFIX + "/"):
        # The anthropic SDK reads Anthropic's shape: say it in the words it parses.
        return json_response(anthropic_error_body(error), status=error.status)
    return json_response(error.body(), status=error.status)
