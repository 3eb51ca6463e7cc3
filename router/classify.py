"""Stream a JSONL file of prompts through the router, one output row per input row."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from router.batcher import BatchEstimator

MAX_PROMPT_BYTES = 1_000_000  # a prompt this large is refused with an error row, not encoded


@dataclass(frozen=True)
class _Row:
    """An input line parsed into an id and a prompt, or the reason it is unusable."""

    id: Any
    prompt: str | None
    error: str | None


def _parse(line: str, line_no: int) -> _Row:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return _Row(None, None, f"line {line_no}: invalid JSON ({exc.msg})")
    if not isinstance(obj, dict):
        return _Row(None, None, f"line {line_no}: expected a JSON object")
    row_id = obj.get("id")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return _Row(row_id, None, f"line {line_no}: missing or empty prompt")
    if len(prompt.encode("utf-8", errors="replace")) >= MAX_PROMPT_BYTES:
        return _Row(
            row_id,
            None,
            f"line {line_no}: prompt of {len(prompt)} characters exceeds {MAX_PROMPT_BYTES} bytes",
        )
    return _Row(row_id, prompt, None)


def _batches(lines: Iterable[str], batch_size: int) -> Iterator[list[_Row]]:
    batch: list[_Row] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        batch.append(_parse(line, line_no))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify_stream(
    router: BatchEstimator, source: Iterable[str], sink: IO[str], batch_size: int = 64
) -> tuple[int, int]:
    """Read rows from source, write estimates or error rows to sink; return (rows, errors).

    Memory stays bounded by one batch: rows are read, estimated and written batch by batch.
    """
    rows = errors = 0
    for batch in _batches(source, batch_size):
        good = [row for row in batch if row.prompt is not None]
        estimates = iter(
            router.estimate_batch([row.prompt for row in good if row.prompt is not None])
        )
        for row in batch:
            out: dict[str, Any] = {"id": row.id}
            if row.error is not None:
                out["error"] = row.error
                errors += 1
            else:
                out.update(next(estimates).as_dict())
            sink.write(json.dumps(out, ensure_ascii=False) + "\n")
            rows += 1
    return rows, errors
