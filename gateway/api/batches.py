"""OpenAI's /v1/files and /v1/batches: a JSONL of chat requests run as a batch (docs/batches.md).

Key auth as on /v1/chat/completions; a key sees its team's files and batches only (another
team's are not found). The lines themselves are routed, held and run by the batch driver
(gateway/batches/worker.py).
"""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.batch_common import authenticated, errors_as, found, store_of, worker_of
from gateway.batches.worker import ENDPOINT, WINDOW
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.http import error_response, json_response, read_json
from gateway.settings import ServerSettings
from gateway.state import Gateway

router = APIRouter()  # its error responses are declared where the app includes it
_PURPOSES = ("batch",)
_answered = errors_as(error_response)  # in OpenAI's error shape


def _list(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.post("/v1/files")
@_answered
async def upload_file(request: Request) -> Response:
    """Upload a JSONL of requests (multipart/form-data: `file`, `purpose=batch`)."""
    key = await authenticated(request)
    body = await _read_capped(request, worker_of(request).settings.max_file_bytes)
    fields, upload = _multipart(request.headers.get("content-type", ""), body)
    purpose = fields.get("purpose")
    if purpose not in _PURPOSES:
        raise InvalidRequest("purpose must be 'batch'", param="purpose")
    if upload is None:
        raise InvalidRequest("The form needs a 'file' part", param="file")
    filename, content = upload
    record = await store_of(request).add_file(key.team, key.id, purpose, filename, content)
    return json_response(record.json())


@router.get("/v1/files")
@_answered
async def list_files(request: Request, purpose: str | None = None, limit: int = 100) -> Response:
    key = await authenticated(request)
    listed = await store_of(request).files(key.team, purpose, max(1, min(limit, 10_000)))
    return json_response(_list([f.json() for f in listed]))


@router.get("/v1/files/{file_id}")
@_answered
async def retrieve_file(request: Request, file_id: str) -> Response:
    key = await authenticated(request)
    record = await found(store_of(request).file(key.team, file_id), _no_file(file_id))
    return json_response(record.json())


@router.get("/v1/files/{file_id}/content")
@_answered
async def file_content(request: Request, file_id: str) -> Response:
    key = await authenticated(request)
    content = await found(store_of(request).content(key.team, file_id), _no_file(file_id))
    return Response(content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
@_answered
async def delete_file(request: Request, file_id: str) -> Response:
    key = await authenticated(request)
    if not await store_of(request).delete_file(key.team, file_id):
        raise _no_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


@router.post("/v1/batches")
@_answered
async def create_batch(request: Request) -> Response:
    """Start a batch of the input file's lines; routed, held and submitted in the background."""
    key = await authenticated(request)
    gateway: Gateway = request.app.state.gateway
    body = await read_json(request, gateway.settings.server, _json_object)
    if body.get("endpoint") != ENDPOINT:
        raise InvalidRequest(f"endpoint must be {ENDPOINT!r}", param="endpoint")
    if body.get("completion_window") != "24h":
        raise InvalidRequest("completion_window must be '24h'", param="completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object", param="metadata")
    file_id = body.get("input_file_id")
    store = store_of(request)
    record = await store.file(key.team, file_id) if isinstance(file_id, str) else None
    if record is None or record.purpose != "batch":
        raise NotFound(
            f"No batch file with id {file_id!r}", param="input_file_id", code="not_found"
        )
    batch = await store.add_batch(key.team, key.id, ENDPOINT, record.id, WINDOW, metadata)
    worker_of(request).wake()
    return json_response(batch.json())


@router.get("/v1/batches")
@_answered
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> Response:
    key = await authenticated(request)
    size = max(1, min(limit, 100))
    listed = await store_of(request).batches(key.team, size + 1, after)
    return json_response(_list([b.json() for b in listed[:size]], has_more=len(listed) > size))


@router.get("/v1/batches/{batch_id}")
@_answered
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    key = await authenticated(request)
    batch = await found(store_of(request).batch(key.team, batch_id), _no_batch(batch_id))
    return json_response(batch.json())


@router.post("/v1/batches/{batch_id}/cancel")
@_answered
async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Cancel: the provider jobs are cancelled and unfinished lines' holds released."""
    key = await authenticated(request)
    lookup = store_of(request).request_cancel(key.team, batch_id)
    batch = await found(lookup, _no_batch(batch_id))
    worker_of(request).wake()
    return json_response(batch.json())


def _json_object(body: Any, _: ServerSettings) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object")
    return body


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit`, before reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"A file may be at most {limit} bytes (batches.max_file_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"A file may be at most {limit} bytes (batches.max_file_bytes)")
    return bytes(body)


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such file: {file_id!r}", param="file_id", code="not_found")


def _no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No batch with id {batch_id!r}", code="not_found")


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """A multipart/form-data body's text fields and its `file` part (name, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("Send the file as multipart/form-data")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    upload = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(data, bytes):
            continue
        if name == "file":
            upload = (part.get_filename() or "upload.jsonl", data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, upload
