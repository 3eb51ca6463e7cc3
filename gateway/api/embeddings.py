"""POST /v1/embeddings: OpenAI's embeddings API, served by the configured embedding models.

Embeddings are not routed: the client names an embedding model (`mode: embedding`), and the
request is budgeted (hold, then settle) and logged like a chat request (gateway/pipeline/embed.py).
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import bearer_token
from gateway.errors import InvalidRequest
from gateway.http import error_response, json_response, read_json, request_id
from gateway.pipeline.embed import EmbeddingRequest, embed
from gateway.pipeline.run import Answer
from gateway.settings import ServerSettings
from gateway.state import gateway_of

# OpenAI's own limit on the inputs of one request.
MAX_INPUTS = 2048


class EmbeddingsBody(BaseModel):
    """The request as OpenAI documents it; anything else is a 400 naming the field."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


async def embeddings(request: Request) -> Response:
    gateway = gateway_of(request)
    server = gateway.settings.server

    async def read() -> EmbeddingRequest:
        return await read_json(request, server, parse_embedding_request)

    rid = request_id(request)
    outcome = await embed(gateway, rid, bearer_token(request.headers), read)
    if isinstance(outcome, Answer):
        return json_response(outcome.completion, headers=outcome.headers)
    return error_response(outcome.error, outcome.request_id)


def parse_embedding_request(body: Any, _: ServerSettings) -> EmbeddingRequest:
    """Validate a decoded body; the first problem becomes a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        parsed = EmbeddingsBody.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"][:1]) or None
        raise InvalidRequest(f"Invalid value for {param!r}: {error['msg']}", param=param) from None
    inputs = _inputs(parsed.input)
    if not inputs or any(len(i) == 0 for i in inputs):
        raise InvalidRequest("'input' must not be empty, nor hold an empty input", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"'input' holds more than {MAX_INPUTS} inputs", param="input")
    return EmbeddingRequest(
        model=parsed.model,
        inputs=inputs,
        payload=parsed.model_dump(exclude_none=True),
    )


def _inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The inputs one by one: a text, or a list of token ids, each."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [cast(list[int], value)]  # one input given as token ids
    return list(cast(list[str] | list[list[int]], value))
