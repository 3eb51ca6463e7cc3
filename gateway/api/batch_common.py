"""What the batch routes share: OpenAI's /v1/files and /v1/batches (gateway/api/batches.py) and
Anthropic's /v1/messages/batches (gateway/api/message_batches.py).

Each route authenticates the key, works on its team's rows in the batch store, and answers a
GatewayError in its API's error shape.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastapi import Request
from fastapi.responses import Response

from gateway.auth import bearer_token
from gateway.batches.store import BatchStore
from gateway.batches.worker import BatchWorker
from gateway.errors import GatewayError
from gateway.state import Gateway
from gateway.store import ApiKey

P = ParamSpec("P")
T = TypeVar("T")
Route = Callable[P, Awaitable[Response]]


async def authenticated(request: Request) -> ApiKey:
    """The request's key (bearer or x-api-key), as on the API's other routes."""
    gateway: Gateway = request.app.state.gateway
    return await gateway.keys.authenticate(bearer_token(request.headers))


def worker_of(request: Request) -> BatchWorker:
    worker: BatchWorker = request.app.state.batch_worker
    return worker


def store_of(request: Request) -> BatchStore:
    return worker_of(request).store


async def found(lookup: Awaitable[T | None], missing: GatewayError) -> T:
    """The looked-up row; `missing` raised when there is none (or it is another team's)."""
    value = await lookup
    if value is None:
        raise missing
    return value


def errors_as(
    render: Callable[[GatewayError], Response],
) -> Callable[[Route[P]], Route[P]]:
    """A route decorator: a GatewayError the route raises is answered by `render`."""

    def decorate(route: Route[P]) -> Route[P]:
        @functools.wraps(route)  # FastAPI reads the route's own parameters through __wrapped__
        async def answered(*args: P.args, **kwargs: P.kwargs) -> Response:
            try:
                return await route(*args, **kwargs)
            except GatewayError as exc:
                return render(exc)

        return answered

    return decorate
