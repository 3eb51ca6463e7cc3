"""Structured logs (`server.log_format: json`): every log line one JSON object, and one line of
Rightsize's own per request, written where the request ends (gateway.pipeline.call.finish).

The request line carries ids, routing and money, never prompt or answer text.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.store import SpendRecord

log = logging.getLogger("rightsize.requests")

# The LogRecord attribute the request line's fields travel in, from log_request to the formatter.
FIELDS_ATTR = "rightsize_fields"


def request_fields(record: SpendRecord, cache: str | None) -> dict[str, Any]:
    """The request line's fields; `cache` is hit, miss or None when not looked up."""
    return {
        "event": "request",
        "request_id": record.request_id,
        "team": record.team,
        "key_id": record.key_id,
        "requested_model": record.requested_model,
        "model": record.deployment,
        "tier": record.tier,
        "demand": record.reasoning_demand,
        "cache": cache,
        "status": record.status,
        "error": record.error_type,
        "stream": record.stream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        # A string, as in the spend log and the x-rightsize-cost-usd header: exact, not a float.
        "cost_usd": format(record.cost_usd.normalize(), "f") if record.cost_usd else "0",
        "upstream_ms": _ms(record.upstream_ms),
        "overhead_ms": _ms(record.overhead_ms),
        "attempts": record.attempts,
    }


def log_request(record: SpendRecord, cache: str | None) -> None:
    """Write the request's line (at INFO, on the rightsize.requests logger)."""
    if log.isEnabledFor(logging.INFO):
        log.info("request", extra={FIELDS_ATTR: request_fields(record, cache)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
