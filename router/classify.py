"""Stream a JSONL file of prompts through the router, one output row per input row."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from router.batcher import BatchEstimator, estimate_each
from router.estimate import Estimate
from router.messages import prompt_from_messages

MAX_PROMPT_BYTES = 1_000_000  # a prompt this large is refused with an error row, not encoded
# A line is never held whole beyond this (JSON escapes can make a 1 MB prompt's line 6 MB),
# so a file that is one huge line (a JSON array passed for JSONL) costs no more memory.
MAX_LINE_BYTES = 8_000_000


@dataclass(frozen=True)
class OverlongLine:
    """A line longer than the reader's limit: skipped in chunks, never held in memory."""

    n_bytes: int


@dataclass(frozen=True)
class _Row:
    """An input line parsed into an id and a prompt, or the reason it is unusable."""

    line_no: int
    id: Any
    prompt: str | None
    error: str | None


def read_lines(
    stream: IO[bytes],
    max_line_bytes: int = MAX_LINE_BYTES,
    on_bytes: Callable[[int], object] | None = None,
) -> Iterator[str | OverlongLine]:
    """Yield the stream's lines as text: UTF-8, a leading BOM dropped, bad bytes as U+FFFD.

    A line over max_line_bytes is yielded as OverlongLine after reading past it in chunks.
    """
    first = True
    while chunk := stream.readline(max_line_bytes + 1):
        if on_bytes is not None:
            on_bytes(len(chunk))
        if first and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8) :]
        first = False
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            size = len(chunk)
            while chunk and not chunk.endswith(b"\n"):
                chunk = stream.readline(max_line_bytes)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            yield OverlongLine(size)
        else:
            yield chunk.decode("utf-8", errors="replace")


def _parse(line: str | OverlongLine, line_no: int) -> _Row:
    where = f"line {line_no}"
    if isinstance(line, OverlongLine):
        return _Row(line_no, None, None, f"{where}: {line.n_bytes} bytes, over {MAX_LINE_BYTES}")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return _Row(line_no, None, None, f"{where}: invalid JSON ({exc.msg})")
    if not isinstance(obj, dict):
        return _Row(line_no, None, None, f"{where}: expected a JSON object")
    row_id = obj.get("id")
    prompt, problem = _prompt(obj)
    if problem is not None:
        return _Row(line_no, row_id, None, f"{where}: {problem}")
    if len(prompt.encode("utf-8", errors="replace")) >= MAX_PROMPT_BYTES:
        return _Row(
            line_no,
            row_id,
            None,
            f"{where}: prompt of {len(prompt)} characters exceeds {MAX_PROMPT_BYTES} bytes",
        )
    return _Row(line_no, row_id, prompt, None)


def _prompt(obj: dict[str, Any]) -> tuple[str, str | None]:
    """The row's text, from "prompt" or, as the gateway reads a chat, from "messages"."""
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str):
            return "", f"'prompt' must be a string, got {type(text).__name__}"
    elif "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return "", "'messages' must be a list of message objects"
        text = prompt_from_messages(messages)
    else:
        return "", "missing prompt: needs 'prompt' (a string) or 'messages' (a chat)"
    if not text.strip():
        return "", "empty prompt"
    return text, None


def _batches(lines: Iterable[str | OverlongLine], batch_size: int) -> Iterator[list[_Row]]:
    batch: list[_Row] = []
    for line_no, line in enumerate(lines, start=1):
        if isinstance(line, str) and not line.strip():
            continue
        batch.append(_parse(line, line_no))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _estimates(router: BatchEstimator, rows: list[_Row]) -> list[Estimate | str]:
    """One estimate per row, or the error the router raised on that row."""
    prompts = [row.prompt for row in rows if row.prompt is not None]
    return [
        f"line {row.line_no}: not estimated ({type(result).__name__}: {result})"
        if isinstance(result, Exception)
        else result
        for row, result in zip(rows, estimate_each(router, prompts), strict=True)
    ]


def classify_stream(
    router: BatchEstimator,
    source: Iterable[str | OverlongLine],
    sink: IO[str],
    batch_size: int = 64,
) -> tuple[int, int]:
    """Read rows from source, write estimates or error rows to sink; return (rows, errors).

    Memory stays bounded by one batch: rows are read, estimated and written batch by batch.
    """
    rows = errors = 0
    for batch in _batches(source, batch_size):
        estimates = iter(_estimates(router, [row for row in batch if row.prompt is not None]))
        for row in batch:
            out: dict[str, Any] = {"id": row.id}
            result = row.error if row.error is not None else next(estimates)
            if isinstance(result, Estimate):
                out.update(result.as_dict())
            else:
                out["error"] = result
                errors += 1
            sink.write(json.dumps(out, ensure_ascii=False) + "\n")
            rows += 1
    return rows, errors
