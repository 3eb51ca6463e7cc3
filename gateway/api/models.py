"""GET /v1/models and GET /v1/models/{id}: the names a key may send as `model`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from gateway.auth import bearer_token
from gateway.errors import GatewayError, NotFound
from gateway.http import error_response, json_response
from gateway.state import Gateway, gateway_of
from gateway.store import ApiKey


async def list_models(request: Request) -> Response:
    """`auto`, the tiers and the configured models this key may use."""
    gateway = gateway_of(request)
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
    except GatewayError as exc:
        return error_response(exc)
    names = [n for n in gateway.policy.names() if _may_use(gateway, key, n)]
    return json_response({"object": "list", "data": [_model(n) for n in names]})


async def retrieve_model(request: Request, model_id: str) -> Response:
    """One name of the list; 404 for a name that is not in it (unknown, or not this key's)."""
    gateway = gateway_of(request)
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        if model_id not in gateway.policy.names() or not _may_use(gateway, key, model_id):
            raise NotFound(f"The model {model_id!r} does not exist", param="model")
    except GatewayError as exc:
        return error_response(exc)
    return json_response(_model(model_id))


def _may_use(gateway: Gateway, key: ApiKey, name: str) -> bool:
    return key.may_use(name, gateway.policy.tier_of(name))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rightsize"}
