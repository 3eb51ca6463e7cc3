"""Anthropic's Message Batches (/v1/messages/batches) on the batch machinery (docs/batches.md).

A batch's requests are kept as a JSONL file of `/v1/messages` lines (purpose `message_batch`)
and run by the same driver as OpenAI's batches (gateway/batches/worker.py): each line's params
translated into a chat request as /v1/messages translates them, routed, held at the batch price,
grouped per deployment into provider batch jobs (or run one by one), charged once answered.
The batch's endpoint (`/v1/messages`) is its API: its results are read back as Anthropic
messages, in the requests' order. Authenticated by `x-api-key` (or a bearer key) as
/v1/messages is; a key sees its team's batches only; errors are Anthropic's shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.anthropic import message
from gateway.anthropic.errors import status_type
from gateway.api.batch_common import authenticated, errors_as, found, store_of, worker_of
from gateway.api.messages import error_response
from gateway.batches.store import BatchRecord, LineRecord
from gateway.batches.worker import MESSAGES_ENDPOINT, WINDOW
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.http import json_response, read_json
from gateway.settings import ServerSettings
from gateway.state import Gateway
from gateway.store import ApiKey

router = APIRouter()
PURPOSE = "message_batch"  # the stored requests' file: not an input to /v1/batches
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic's rule for custom_id
# The OpenAI lifecycle the driver keeps, as Anthropic's processing_status.
_PROCESSING = {"cancelling": "canceling", "completed": "ended", "failed": "ended"}
_PROCESSING |= {"cancelled": "ended", "expired": "ended"}
_answered = errors_as(error_response)  # in Anthropic's error shape


@router.post("/v1/messages/batches")
@_answered
async def create_message_batch(request: Request) -> Response:
    """Keep the requests as a file of /v1/messages lines and start a batch of them."""
    key = await authenticated(request)
    gateway: Gateway = request.app.state.gateway
    body = await read_json(request, gateway.settings.server, _json_object)
    settings = worker_of(request).settings
    lines = _lines(body.get("requests"), settings.max_lines)
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    if len(content) > settings.max_file_bytes:
        raise PayloadTooLarge(
            f"A batch's requests may be at most {settings.max_file_bytes} bytes "
            "(batches.max_file_bytes)"
        )
    store = store_of(request)
    stored = await store.add_file(key.team, key.id, PURPOSE, "requests.jsonl", content)
    batch = await store.add_batch(
        key.team,
        key.id,
        MESSAGES_ENDPOINT,
        stored.id,
        WINDOW,
        None,
        prefix="msgbatch",
        total=len(lines),
    )
    worker_of(request).wake()
    return json_response(await _message_batch(request, batch))


@router.get("/v1/messages/batches")
@_answered
async def list_message_batches(
    request: Request, limit: int = 20, after_id: str | None = None
) -> Response:
    """The team's message batches, newest first."""
    key = await authenticated(request)
    size = max(1, min(limit, 1000))
    listed = await store_of(request).batches(key.team, size + 1, after_id, MESSAGES_ENDPOINT)
    data = [await _message_batch(request, b) for b in listed[:size]]
    return json_response(
        {
            "data": data,
            "has_more": len(listed) > size,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/v1/messages/batches/{batch_id}")
@_answered
async def retrieve_message_batch(request: Request, batch_id: str) -> Response:
    key = await authenticated(request)
    batch = await _found(request, key, batch_id)
    return json_response(await _message_batch(request, batch))


@router.post("/v1/messages/batches/{batch_id}/cancel")
@_answered
async def cancel_message_batch(request: Request, batch_id: str) -> Response:
    """Cancel: provider jobs cancelled, the requests not yet answered released (`canceled`)."""
    key = await authenticated(request)
    await _found(request, key, batch_id)
    lookup = store_of(request).request_cancel(key.team, batch_id)
    batch = await found(lookup, _not_found(batch_id))
    worker_of(request).wake()
    return json_response(await _message_batch(request, batch))


@router.get("/v1/messages/batches/{batch_id}/results")
@_answered
async def message_batch_results(request: Request, batch_id: str) -> Response:
    """One result per request, in the requests' order (JSONL), once the batch has ended."""
    key = await authenticated(request)
    batch = await _found(request, key, batch_id)
    if _PROCESSING.get(batch.status) != "ended":
        raise InvalidRequest(
            f"Message batch {batch_id!r} is still processing: its results are available "
            "once its processing_status is 'ended'"
        )
    store = store_of(request)
    content = await store.content(batch.team, batch.input_file_id) or b""
    lines = {line.line: line for line in await store.lines(batch.id)}
    requests = [orjson.loads(raw) for raw in content.splitlines() if raw.strip()]
    out = bytearray()
    for index, item in enumerate(requests):
        result = _result(batch, item.get("body") or {}, lines.get(index))
        out += orjson.dumps({"custom_id": item.get("custom_id"), "result": result}) + b"\n"
    return Response(bytes(out), media_type="application/x-jsonl")


def _result(batch: BatchRecord, params: dict[str, Any], line: LineRecord | None) -> dict[str, Any]:
    """One request's outcome, Anthropic's way."""
    if line is None:
        # Never routed: the batch was cancelled first, or refused as a whole.
        if batch.status == "cancelled":
            return {"type": "canceled"}
        problem = (batch.errors or [{}])[0]
        return _errored(400, str(problem.get("message") or "The batch was refused"))
    result = line.result or {}
    if line.status == "done":
        stops = params.get("stop_sequences")
        stops = stops if isinstance(stops, list) else None
        body = result.get("body") or {}
        return {"type": "succeeded", "message": message(body, stops, line.deployment or "")}
    if line.status == "cancelled":
        return {"type": "canceled"}
    if line.status == "expired" or (line.status == "pending" and batch.status == "expired"):
        return {"type": "expired"}
    error = result.get("error") or {}
    return _errored(int(result.get("status_code") or 500), str(error.get("message") or ""))


def _errored(status: int, text: str) -> dict[str, Any]:
    detail = {"type": status_type(status), "message": text}
    return {"type": "errored", "error": {"type": "error", "error": detail}}


async def _message_batch(request: Request, batch: BatchRecord) -> dict[str, Any]:
    """Anthropic's message_batch object."""
    status = _PROCESSING.get(batch.status, "in_progress")
    counts = await store_of(request).line_counts(batch.id)
    routed = sum(counts.values())
    expired = counts.get("expired", 0)
    if status == "ended" and batch.status == "cancelled":
        canceled = counts.get("cancelled", 0) + batch.total - routed
        errored = counts.get("failed", 0)
    elif batch.status == "expired":  # requests never routed expired with it
        canceled = counts.get("cancelled", 0)
        errored = counts.get("failed", 0)
        expired += batch.total - routed
    else:
        canceled = counts.get("cancelled", 0)
        errored = counts.get("failed", 0) + (batch.total - routed if status == "ended" else 0)
    ended_at = batch.completed_at or batch.cancelled_at or batch.failed_at or batch.expired_at
    results_url = None
    if status == "ended":
        base = str(request.base_url).rstrip("/")
        results_url = f"{base}/v1/messages/batches/{batch.id}/results"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": 0
            if status == "ended"
            else batch.total - routed + counts.get("pending", 0),
            "succeeded": counts.get("done", 0),
            "errored": errored,
            "canceled": canceled,
            "expired": expired,
        },
        "created_at": _rfc3339(batch.created_at),
        "ended_at": _rfc3339(ended_at),
        "expires_at": _rfc3339(batch.expires_at),
        "archived_at": None,
        "cancel_initiated_at": _rfc3339(batch.cancelling_at),
        "results_url": results_url,
    }


async def _found(request: Request, key: ApiKey, batch_id: str) -> BatchRecord:
    """The team's message batch; another team's, or an OpenAI batch, is not found."""
    batch = await store_of(request).batch(key.team, batch_id)
    if batch is None or batch.endpoint != MESSAGES_ENDPOINT:
        raise _not_found(batch_id)
    return batch


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No message batch with id {batch_id!r}", code="not_found")


def _lines(requests: Any, max_lines: int) -> list[dict[str, Any]]:
    """The requests as /v1/messages lines; their params are checked when the batch runs (a
    request whose params are invalid is `errored`, as on Anthropic's API)."""
    if not isinstance(requests, list) or not requests:
        raise InvalidRequest("requests: a non-empty list", param="requests")
    if len(requests) > max_lines:
        raise InvalidRequest(f"requests: at most {max_lines} (batches.max_lines)", param="requests")
    lines, seen = [], set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict):
            raise InvalidRequest(f"requests.{i}: an object", param=f"requests.{i}")
        custom_id, params = item.get("custom_id"), item.get("params")
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise InvalidRequest(
                f"requests.{i}.custom_id: 1 to 64 letters, digits, '_' or '-'",
                param=f"requests.{i}.custom_id",
            )
        if custom_id in seen:
            raise InvalidRequest(
                f"requests.{i}.custom_id: {custom_id!r} is used twice",
                param=f"requests.{i}.custom_id",
            )
        if not isinstance(params, dict):
            raise InvalidRequest(f"requests.{i}.params: an object", param=f"requests.{i}.params")
        seen.add(custom_id)
        lines.append(
            {"custom_id": custom_id, "method": "POST", "url": MESSAGES_ENDPOINT, "body": params}
        )
    return lines


def _json_object(body: Any, _: ServerSettings) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body


def _rfc3339(value: datetime | None) -> str | None:
    """Anthropic's timestamps (RFC 3339, UTC); SQLite gives them back without a zone."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
