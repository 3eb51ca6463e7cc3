"""What the direct aiohttp transports share (openai_http, anthropic_http): one pooled session
per process, certificates as httpx chose them, a stream's lines, and error text fit to show."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import certifi
import orjson

from gateway.errors import UpstreamBadRequest, UpstreamError
from gateway.scrub import Redactor

# Upstream statuses that are the request's fault, not the deployment's: no fallback.
CLIENT_ERRORS = frozenset({400, 413, 422})
# Upstream text is cut to this length after redaction, so that a cut never leaves part of a
# secret where the whole one would have been redacted.
MAX_MESSAGE = 1000
# Idle connections are dropped a little before the common server keep-alive of 5 s (uvicorn,
# vLLM): reusing one the server is closing at that moment fails the POST, which is not retried.
KEEPALIVE_S = 4.0


class PooledSession:
    """One aiohttp session, created on first use: a session belongs to the loop it is made in."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        # Loading the CA bundle takes milliseconds: at start-up, not on a first request's path.
        self._ssl = ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=KEEPALIVE_S, ssl=self._ssl
            )
            # No cookie jar: cookies an upstream sets are not state this process should keep.
            session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
            self._session = session
        return session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def ssl_context() -> ssl.SSLContext:
    """Certificates as httpx chose them: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


async def read_lines(content: aiohttp.StreamReader) -> AsyncGenerator[list[bytes], None]:
    """The body's lines without their endings, in a batch per network read.

    Split here rather than by StreamReader.readline, which refuses a line longer than twice its
    read buffer (2 x 256 KiB in aiohttp 3.14): one big chunk must not end a stream.
    """
    pending = bytearray()
    async for piece in content.iter_any():
        pending += piece
        end = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
        if end:
            yield bytes(pending[:end]).splitlines()
            del pending[:end]
    if pending:  # a last line without its newline, as a line reader returns it
        yield [bytes(pending)]


def describe(exc: BaseException) -> str:
    # str(), not repr(): an aiohttp connection error's repr carries its ConnectionKey, proxy
    # credentials included.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def upstream_error(
    redact: Redactor, deployment: str, message: str, **details: Any
) -> UpstreamError:
    """An upstream failure whose text may reach the client: secrets cut, then the length."""
    return UpstreamError(deployment, redact(message)[:MAX_MESSAGE], **details)


def status_error(
    redact: Redactor,
    deployment: str,
    status: int,
    content: bytes,
    message_of: Callable[[Any], str],
) -> UpstreamError:
    """An upstream's error answer: the request's fault (no fallback) for CLIENT_ERRORS."""
    try:
        message = message_of(orjson.loads(content))
    except orjson.JSONDecodeError:
        message = content.decode(errors="replace") or "no body"
    kind = UpstreamBadRequest if status in CLIENT_ERRORS else UpstreamError
    return kind(deployment, redact(message)[:MAX_MESSAGE], upstream_status=status)
