"""Secrets out of upstream error text and log records.

An upstream's error body is relayed to the tenant (in a 502 or 400) and logged, and some
upstreams echo what they were sent: the request's `Authorization` header, the key they
refused. The gateway's own secrets (each deployment's API key, the master key, the key
secret) are cut from that text wherever they appear, and so is anything that looks like a
credential: the value of an authorization or API-key header, a bearer token, an `sk-` key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

# Header names whose value is a credential, written as a header, a JSON field or a repr.
_HEADER_VALUE = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|x-goog-api-key)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"([^\"'\\\r\n,;}\]]+)"
)
_TOKEN = re.compile(
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"  # a bearer token anywhere
    r"|\bsk-[A-Za-z0-9_-]{8,}"  # OpenAI- and Anthropic-style keys (sk-..., sk-proj-, sk-ant-)
    r"|\bAIza[0-9A-Za-z_-]{30,}"  # Google API keys
)


class Redactor:
    """Replaces the configured secrets and credential-like text with "[redacted]"."""

    def __init__(self, secrets: Iterable[str | bytes | None] = ()) -> None:
        found = {s.decode(errors="replace") if isinstance(s, bytes) else s for s in secrets if s}
        self.secrets = frozenset(s for s in found if s)
        # Longest first, so that a secret containing another is cut whole.
        ordered = sorted(self.secrets, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        text = _HEADER_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        return _TOKEN.sub(_token_redacted, text)

    def union(self, other: Redactor) -> Redactor:
        return Redactor(self.secrets | other.secrets)


def _token_redacted(match: re.Match[str]) -> str:
    token = match.group(0)
    return "Bearer " + REDACTED if token[:6].lower() == "bearer" else REDACTED


class _RedactingRecords:
    """A log record factory that redacts each record as it is made.

    A filter or a formatter would cover only the handlers it is attached to; litellm, uvicorn
    and pytest attach their own. Every record of every logger passes through the factory.
    """

    def __init__(self, make: Any, redactor: Redactor) -> None:
        self.make = make
        self.redactor = redactor

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.make(*args, **kwargs)
        try:
            _redact_record(record, self.redactor)
        except Exception:  # a record that cannot be formatted is the handler's to report
            pass
        return record


def _redact_record(record: logging.LogRecord, redact: Redactor) -> None:
    message = record.getMessage()
    clean = redact(message)
    if clean != message:
        # Arguments are redacted one by one where that suffices, so that formatters that read
        # record.args (uvicorn's access log) keep working; otherwise the message is replaced.
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg, redact) for arg in record.args)
        if record.getMessage() != clean:
            record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _redact_arg(arg: Any, redact: Redactor) -> Any:
    if isinstance(arg, int | float) or arg is None:
        return arg
    text = str(arg)
    clean = redact(text)
    return arg if clean == text else clean


def redact_logs(redactor: Redactor) -> None:
    """Redact `redactor`'s secrets (and credential-like text) from every log record made from
    now on in this process; each app built adds its secrets to those of the earlier ones."""
    current = logging.getLogRecordFactory()
    if isinstance(current, _RedactingRecords):
        current.redactor = current.redactor.union(redactor)
    else:
        logging.setLogRecordFactory(_RedactingRecords(current, redactor))
