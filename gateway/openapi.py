"""The OpenAPI document, served only when server.openapi is on, describing what the API does.

FastAPI's generated document misses three things here: the chat route is a plain Starlette
route (FastAPI's per-request machinery costs time on the hot path), which FastAPI does not
document; it reads its body itself (to bound its size and shape before validation), so FastAPI
knows no request body for it; and FastAPI advertises 422 for invalid input where this API
answers 400 in the OpenAI error shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from gateway.anthropic import CountTokensRequest, MessagesRequest
from gateway.api.embeddings import EmbeddingsBody
from gateway.schemas import ChatRequest

_REF = "#/components/schemas/{model}"
# The Anthropic request's parts, named apart from the OpenAI request's (both have a TextPart).
_ANTHROPIC_REF = "#/components/schemas/Anthropic{model}"
_ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicError"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error, in the OpenAI shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

CHAT_COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An OpenAI chat completion, as the upstream deployment answered it.",
    "required": ["choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
    },
}


# One server-sent event (OpenAPI before 3.2: a stream's `schema` describes each event).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk as JSON (the last may carry `usage` with "
            "`cost_usd`), an OpenAI-shaped error object, or `[DONE]`.",
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error of the Anthropic routes, in Anthropic's shape.",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {
                    "enum": [
                        "invalid_request_error",
                        "authentication_error",
                        "permission_error",
                        "not_found_error",
                        "request_too_large",
                        "rate_limit_error",
                        "api_error",
                        "overloaded_error",
                        "timeout_error",
                    ]
                },
                "message": {"type": "string"},
                "budget": {"type": "object", "description": "The budget a 429 refused on"},
            },
        },
        "request_id": {"type": "string"},
    },
}

ANTHROPIC_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An Anthropic message: an Anthropic-format deployment's own, as it came, or "
    "translated from an OpenAI-format deployment's answer.",
    "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": {"type": "string"},
        "content": {"type": "array", "items": {"type": "object"}},
        "stop_reason": {
            "enum": [
                "end_turn",
                "max_tokens",
                "stop_sequence",
                "tool_use",
                "refusal",
                # Only from Anthropic-format deployments, passed on as they came.
                "pause_turn",
                "model_context_window_exceeded",
            ]
        },
        "stop_sequence": {"type": ["string", "null"]},
        "usage": {"type": "object"},
    },
}


def error_response(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is the OpenAI-shaped error."""
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


# What POST /v1/chat/completions answers besides 200 (README.md, "What a request returns").
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream: true`, server-sent chunks ending in "
        "`data: [DONE]`.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
            "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
        },
    },
    202: {
        "description": "Deferred (`Prefer: respond-async` with a batch or background latency "
        "class): the job `{id, object: chat.completion.job, status, result_url}`, its URL "
        "also in `Location` (docs/batches.md).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    400: error_response(
        "Invalid body: not JSON, an unknown or invalid field (named in `param`), over a shape "
        "limit (server.max_messages, max_message_parts, max_json_depth, max_tools, "
        "max_tool_schema_bytes), or "
        "rejected by the upstream"
    ),
    401: error_response("Missing, unknown or revoked key"),
    403: error_response("The key may not use this model"),
    404: error_response("Unknown model"),
    408: error_response("The body did not arrive within server.body_timeout_s"),
    413: error_response("Body over server.max_body_bytes"),
    429: error_response("A budget or rate limit is exhausted (named in the message)"),
    502: error_response("The upstream deployment failed (named in the message)"),
    503: error_response("The store or Redis is unavailable; retry after `retry-after`"),
    504: error_response("The upstream deployment did not answer in time"),
}

# The request body, by reference to ChatRequest's JSON schema (put in components below).
CHAT_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
    }
}


EMBEDDINGS_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's embeddings list, as the embedding deployment answered it.",
    "required": ["data"],
    "properties": {
        "object": {"type": "string"},
        "model": {"type": "string"},
        "data": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
    },
}

# What POST /v1/embeddings answers (README.md, "Embeddings").
EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The embeddings (floats, or base64 with `encoding_format: base64`)",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsList"}}
        },
    },
    400: error_response(
        "Invalid body, `auto` or a tier (embeddings are not routed), a chat model, or rejected "
        "by the upstream"
    ),
    401: error_response("Missing, unknown or revoked key"),
    403: error_response("The key may not use this model"),
    404: error_response("Unknown model"),
    408: error_response("The body did not arrive within server.body_timeout_s"),
    413: error_response("Body over server.max_body_bytes"),
    429: error_response("A budget or rate limit is exhausted (named in the message)"),
    500: error_response("The model's transport cannot serve embeddings"),
    502: error_response("The embedding deployment failed (named with its api_base)"),
    503: error_response("The store or Redis is unavailable; retry after `retry-after`"),
    504: error_response("The embedding deployment did not answer in time"),
}

EMBEDDINGS_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}
        },
    }
}

MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: error_response("Not a name this key may send as `model` (GET /v1/models lists them)"),
}

# /v1/files and /v1/batches (gateway/api/batches.py).
BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("Invalid body, form or parameter (the field is named in `param`)"),
    404: error_response("No such file or batch of this key's team"),
    413: error_response("A file over batches.max_file_bytes"),
}


def anthropic_error(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is the Anthropic-shaped error."""
    schema = {"schema": _ANTHROPIC_ERROR_REF}
    return {"description": description, "content": {"application/json": schema}}


_ANTHROPIC_ERRORS: dict[int | str, dict[str, Any]] = {
    400: anthropic_error("Invalid body (`invalid_request_error`, the field named in the message)"),
    401: anthropic_error("Missing, unknown or revoked key (`x-api-key` or bearer)"),
    403: anthropic_error("The key may not use this model"),
    404: anthropic_error("Unknown model"),
    413: anthropic_error("Body over server.max_body_bytes"),
    503: anthropic_error("The store or Redis is unavailable; retry after `retry-after`"),
}

MESSAGE_BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: anthropic_error("Invalid requests, or results asked for before the batch ended"),
    401: anthropic_error("No key, or an unknown one"),
    404: anthropic_error("No message batch of this key's team with that id"),
    413: anthropic_error("The requests over batches.max_file_bytes"),
}

MESSAGES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The message; with `stream: true`, Anthropic's server-sent events "
        "(message_start … message_stop).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/AnthropicMessage"}},
            "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
        },
    },
    **_ANTHROPIC_ERRORS,
    429: anthropic_error("A budget or rate limit is exhausted (`rate_limit_error`)"),
    502: anthropic_error("The upstream deployment failed (`api_error`)"),
    504: anthropic_error("The upstream deployment did not answer in time (`timeout_error`)"),
}

MESSAGES_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/AnthropicMessagesRequest"}
            }
        },
    }
}

COUNT_TOKENS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The prompt's input tokens: the pinned model's tokenizer, else cl100k",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input_tokens"],
                    "properties": {"input_tokens": {"type": "integer"}},
                }
            }
        },
    },
    **_ANTHROPIC_ERRORS,
}

COUNT_TOKENS_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/AnthropicCountTokensRequest"}
            }
        },
    }
}


class DocumentedRoute(Route):
    """A plain Starlette route, served without FastAPI's dependency and response layers, that
    the document still describes: through a FastAPI route for the same endpoint that is built
    only to be described, never served."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: Sequence[str],
        responses: dict[int | str, dict[str, Any]],
        openapi_extra: dict[str, Any],
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        self.described = APIRoute(
            path, endpoint, methods=list(methods), responses=responses, openapi_extra=openapi_extra
        )


def install_openapi(app: FastAPI) -> None:
    """Replace the app's document builder with one that tells the truth about bodies and 400s."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the chat body's schema, 400 for 422 and the shared errors."""
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=_described(app.routes),
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    chat = ChatRequest.model_json_schema(ref_template=_REF)
    schemas.update(chat.pop("$defs", {}))
    schemas["ChatRequest"] = chat
    schemas["ChatCompletion"] = CHAT_COMPLETION_SCHEMA
    schemas["Error"] = ERROR_SCHEMA
    for model in (MessagesRequest, CountTokensRequest):
        anthropic = model.model_json_schema(ref_template=_ANTHROPIC_REF)
        schemas.update({f"Anthropic{k}": v for k, v in anthropic.pop("$defs", {}).items()})
        schemas[f"Anthropic{model.__name__}"] = anthropic
    schemas["EmbeddingsRequest"] = EmbeddingsBody.model_json_schema(ref_template=_REF)
    schemas["EmbeddingsList"] = EMBEDDINGS_RESPONSE_SCHEMA
    schemas["AnthropicMessage"] = ANTHROPIC_MESSAGE_SCHEMA
    schemas["AnthropicError"] = ANTHROPIC_ERROR_SCHEMA
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            _answer_as_the_app_does(path, method, operation["responses"])
            if _offers_csv(operation):
                ok = operation["responses"].get("200", {}).setdefault("content", {})
                ok.setdefault("text/csv", {"schema": {"type": "string"}})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return spec


def _described(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The app's routes, each plain route by its described twin, in the order they match."""
    return [r.described if isinstance(r, DocumentedRoute) else r for r in routes]


def _offers_csv(operation: dict[str, Any]) -> bool:
    """A `format` query parameter with a csv choice (the reports) answers text/csv too."""
    for parameter in operation.get("parameters", ()):
        if parameter.get("name") == "format" and parameter.get("in") == "query":
            return "csv" in str(parameter.get("schema", {}))
    return False


def _answer_as_the_app_does(path: str, method: str, responses: dict[str, Any]) -> None:
    # The app's handler turns FastAPI's validation errors into 400 (gateway/app.py).
    if responses.pop("422", None) is not None:
        responses.setdefault(
            "400", error_response("Invalid parameters or body (the field is named in `param`)")
        )
    if path.startswith(("/v1/", "/admin/")):
        # Virtual keys (/v1) and the master key (/admin) are checked before anything else.
        responses.setdefault("401", error_response("Missing or incorrect key"))
        responses.setdefault(
            "503", error_response("The store or Redis is unavailable; retry after `retry-after`")
        )
    if path == "/readyz":
        responses.setdefault(
            "503",
            {
                "description": "A dependency is down: the body names it (`down`, `checks`)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        )
    if path == "/admin/reload":
        responses.setdefault(
            "400",
            error_response(
                "The configuration or the router artifact did not load, or changed a section "
                "taken up only at start (`invalid_configuration`); the running one stays"
            ),
        )
    if path.startswith("/admin/"):
        # Every admin operation names a team, key or budget somewhere (path, query or body).
        responses.setdefault("404", error_response("No such team, key or budget"))
    if path.startswith("/admin/") and method in ("post", "put", "delete"):
        responses.setdefault("409", error_response("Conflicts with an existing or archived team"))
