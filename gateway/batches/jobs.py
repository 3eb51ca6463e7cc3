"""A single chat/completions request answered asynchronously: a one-line batch (issue 26).

A request with `Prefer: respond-async` whose latency class is `batch` or `background` is not
run at once: its body becomes the one line of a batch, routed, held and charged by the batch
driver like any other line (gateway/batches/worker.py). The job's id is the batch's id; its
answer is read back from that line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.batches.store import BatchRecord, BatchStore
from gateway.batches.worker import ENDPOINT, WINDOW
from gateway.store import ApiKey

PREFER_HEADER = "prefer"
JOB_OBJECT = "chat.completion.job"
DEFERRED_CLASSES = ("batch", "background")
# Marks a batch made from one chat request: only those are read as jobs.
_MARK = {"rightsize.job": JOB_OBJECT}
_PENDING = ("validating", "in_progress", "finalizing")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def wants_async(headers: Any) -> bool:
    """Whether the caller asked for a deferred answer (RFC 7240 `Prefer: respond-async`)."""
    prefer = headers.get(PREFER_HEADER)
    if not prefer:
        return False
    return any(p.split("=")[0].strip().lower() == "respond-async" for p in prefer.split(","))


def result_url(job_id: str) -> str:
    return f"/v1/chat/completions/jobs/{job_id}"


async def submit(store: BatchStore, key: ApiKey, body: dict[str, Any]) -> BatchRecord:
    """The request as the one line of a new batch of the key's team."""
    line = {"custom_id": "chat", "method": "POST", "url": ENDPOINT, "body": body}
    content = orjson.dumps(line) + b"\n"
    file = await store.add_file(key.team, key.id, "batch", "chat-completion-job.jsonl", content)
    return await store.add_batch(key.team, key.id, ENDPOINT, file.id, WINDOW, dict(_MARK))


def is_job(batch: BatchRecord) -> bool:
    return (batch.metadata or {}).get("rightsize.job") == JOB_OBJECT


def pending(batch: BatchRecord) -> bool:
    return batch.status in _PENDING


def job_object(batch: BatchRecord) -> dict[str, Any]:
    """The body of a 202: where the job is and where its answer will be."""
    return {
        "id": batch.id,
        "object": JOB_OBJECT,
        "status": batch.status,
        "created_at": int(batch.created_at.timestamp()),
        "result_url": result_url(batch.id),
    }


@dataclass(frozen=True, slots=True)
class JobAnswer:
    """A finished job as the chat endpoint would have answered it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


async def answer(store: BatchStore, batch: BatchRecord) -> JobAnswer:
    """The finished job's completion (200), or its error in OpenAI's shape."""
    lines = await store.lines(batch.id)
    if not lines:  # the batch failed before its line was read
        first = (batch.errors or [{}])[0]
        return _failure(400, first.get("code"), first.get("message") or "The job failed")
    line = lines[0]
    result = line.result or {}
    if line.status == "done":
        headers = {"x-request-id": str(result.get("request_id") or "")}
        if line.deployment is not None:
            headers["x-rightsize-model"] = line.deployment
        if line.tier is not None:
            headers["x-rightsize-tier"] = line.tier
        return JobAnswer(200, dict(result.get("body") or {}), headers)
    error = result.get("error") or {}
    status = int(result.get("status_code") or 502)
    return _failure(status, error.get("code"), error.get("message") or "The job failed")


def _failure(status: int, code: Any, message: str) -> JobAnswer:
    kind = _ERROR_TYPES.get(status, "api_error")
    error = {"message": message, "type": kind, "param": None, "code": code}
    return JobAnswer(status, {"error": error})
