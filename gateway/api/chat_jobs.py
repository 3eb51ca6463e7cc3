"""A chat request answered asynchronously (docs/batches.md, "One request, deferred").

`POST /v1/chat/completions` with `Prefer: respond-async` and a latency class of `batch` or
`background` (the x-rightsize-latency header, or the key's or team's default) answers 202
with a job; `GET /v1/chat/completions/jobs/{id}` answers 202 while it runs, then the
completion (200) or its error. The work is a one-line batch (gateway/batches/jobs.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.auth import bearer_token
from gateway.batches import jobs
from gateway.batches.store import BatchRecord, BatchStore
from gateway.batches.worker import BatchWorker
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.http import error_response, json_response, read_json, request_id
from gateway.latency import requested_class
from gateway.settings import ServerSettings
from gateway.state import gateway_of

router = APIRouter()
_HOLD_POLL_S = 0.05  # how often a held-open request looks at its job


async def deferred(request: Request, parse: Any) -> Response | None:
    """The 202 (or, within `batches.hold_open_s`, the answer) of a request that asked to be
    deferred; None when it runs at once as usual (its class is interactive)."""
    gateway = gateway_of(request)
    worker: BatchWorker = request.app.state.batch_worker
    rid = request_id(request)
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        if requested_class(request.headers, key).latency_class not in jobs.DEFERRED_CLASSES:
            return None

        def validated(body: Any, server: ServerSettings) -> dict[str, Any]:
            if parse(body, server).stream:
                raise InvalidRequest("A deferred request cannot stream", param="stream")
            return dict(body)

        body = await read_json(request, gateway.settings.server, validated)
        batch = await jobs.submit(worker.store, key, body)
    except GatewayError as exc:
        return error_response(exc, rid)
    worker.wake()
    batch = await _hold_open(worker.store, batch, worker.settings.hold_open_s)
    return await _render(worker.store, batch)


@router.get("/v1/chat/completions/jobs/{job_id}")
async def chat_job(request: Request, job_id: str) -> Response:
    """202 with the job while it runs; then the completion, or its error."""
    gateway = gateway_of(request)
    worker: BatchWorker = request.app.state.batch_worker
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
        found = await worker.store.batch(key.team, job_id)
        if found is None or not jobs.is_job(found):
            raise NotFound(f"No chat completion job with id {job_id!r}", code="not_found")
    except GatewayError as exc:
        return error_response(exc)
    return await _render(worker.store, found)


async def _hold_open(store: BatchStore, batch: BatchRecord, hold_s: float) -> BatchRecord:
    deadline = time.monotonic() + hold_s
    while jobs.pending(batch) and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(_HOLD_POLL_S, left))
        batch = await store.batch(batch.team, batch.id) or batch
    return batch


async def _render(store: BatchStore, batch: BatchRecord) -> Response:
    if jobs.pending(batch):
        location = jobs.result_url(batch.id)
        return json_response(
            jobs.job_object(batch), status=202, headers={"location": location, "retry-after": "1"}
        )
    found = await jobs.answer(store, batch)
    return json_response(found.body, status=found.status, headers=found.headers)
