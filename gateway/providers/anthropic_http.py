"""Anthropic's Messages API over one pooled aiohttp session: POST {api_base}/v1/messages.

A `/v1/messages` request routed to a deployment that speaks this API goes as the client wrote
it (its model swapped for the deployment's), with the client's `anthropic-version` and
`anthropic-beta` headers, and its answer or events come back as Anthropic wrote them. A chat-
completions request for such a deployment goes through litellm, which translates OpenAI's API
to Anthropic's (gateway/providers/litellm_provider.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from gateway.anthropic.upstream import EventReader, completion
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.native import NativeRequest
from gateway.providers.base import Provider
from gateway.providers.pooled import (
    PooledSession,
    describe,
    read_lines,
    status_error,
    upstream_error,
)
from gateway.scrub import Redactor
from policies import Deployment

DEFAULT_API_BASE = "https://api.anthropic.com"
# The version the API requires a client to name; the client's own is passed on when it sends one.
DEFAULT_VERSION = "2023-06-01"
_PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


class AnthropicHTTPProvider:
    """Native calls to Anthropic-format deployments; OpenAI-shaped calls through `openai`."""

    api = "anthropic"

    def __init__(
        self,
        api_keys: Mapping[str, str],
        *,
        openai: Provider | None = None,
        max_connections: int = 512,
        redactor: Redactor | None = None,
    ) -> None:
        self._keys = api_keys
        self._openai = openai
        self._redact = redactor or Redactor(api_keys.values())
        self._pool = PooledSession(max_connections)

    async def aclose(self) -> None:
        await self._pool.aclose()

    # The Provider interface: an OpenAI-shaped request, translated by litellm.

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._translator().complete(_for_litellm(deployment), payload)

    def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        return self._translator().stream(_for_litellm(deployment), payload)

    # The NativeProvider interface: an Anthropic request, as is.

    def speaks(self, deployment: Deployment) -> bool:
        return deployment.speaks_anthropic

    async def complete_native(
        self, deployment: Deployment, request: NativeRequest
    ) -> dict[str, Any]:
        body = {**request.body, "model": deployment.anthropic_model, "stream": False}
        status, content = await self._post(deployment, "/v1/messages", body, request.headers)
        if status >= 400:
            raise self._status_error(deployment, status, content)
        try:
            message: dict[str, Any] = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(deployment.name, "the response is not JSON") from exc
        return completion(message)

    async def stream_native(
        self, deployment: Deployment, request: NativeRequest
    ) -> AsyncIterator[dict[str, Any]]:
        body = {**request.body, "model": deployment.anthropic_model, "stream": True}
        url = self._url(deployment, "/v1/messages")
        try:
            response = await self._pool.get().post(
                url,
                data=orjson.dumps(body),
                headers=self._headers(deployment, request.headers),
                timeout=_stream_timeout(deployment),
                proxy=_proxy(url),
                allow_redirects=False,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except aiohttp.ClientError as exc:
            raise self._error(deployment, f"connection failed: {describe(exc)}") from exc
        reader = EventReader()
        try:
            if response.status >= 400:
                raise self._status_error(deployment, response.status, await response.read())
            name = ""
            async with aclosing(read_lines(response.content)) as batches:
                async for lines in batches:
                    for line in lines:
                        if line.startswith(b"event:"):
                            name = line[6:].strip().decode()
                            continue
                        if not line.startswith(b"data:"):
                            continue
                        data = orjson.loads(line[5:].strip())
                        kind = data.get("type") or name
                        if kind == "error":
                            message = _message(data)
                            raise self._error(deployment, message, code="upstream_stream_error")
                        yield reader.chunk(name or kind, data)
                        if kind == "message_stop":
                            return
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise self._error(deployment, f"the stream broke off: {describe(exc)}") from exc
        finally:
            response.release()

    async def count_tokens(
        self, deployment: Deployment, body: dict[str, Any], headers: Mapping[str, str]
    ) -> int:
        """The upstream's own count of a prompt (POST /v1/messages/count_tokens)."""
        sent = {**body, "model": deployment.anthropic_model}
        path = "/v1/messages/count_tokens"
        status, content = await self._post(deployment, path, sent, headers)
        if status >= 400:
            raise self._status_error(deployment, status, content)
        try:
            return int(orjson.loads(content)["input_tokens"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(deployment.name, "the count is not a JSON count") from exc

    async def _post(
        self,
        deployment: Deployment,
        path: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
    ) -> tuple[int, bytes]:
        url = self._url(deployment, path)
        try:
            async with self._pool.get().post(
                url,
                data=orjson.dumps(body),
                headers=self._headers(deployment, client_headers),
                timeout=aiohttp.ClientTimeout(total=deployment.timeout_s),
                proxy=_proxy(url),
                allow_redirects=False,  # the body and key go nowhere else
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except aiohttp.ClientError as exc:
            raise self._error(deployment, f"connection failed: {describe(exc)}") from exc

    def _translator(self) -> Provider:
        if self._openai is None:
            raise RuntimeError("no litellm provider to translate chat completions for Anthropic")
        return self._openai

    def _url(self, deployment: Deployment, path: str) -> URL:
        base = (deployment.api_base or DEFAULT_API_BASE).rstrip("/")
        # litellm takes an api_base with or without /v1/messages: so does this.
        base = base.removesuffix("/v1/messages").removesuffix("/v1")
        return URL(base + path)

    def _headers(self, deployment: Deployment, client: Mapping[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": DEFAULT_VERSION}
        for name in _PASSED_HEADERS:
            value = client.get(name)
            if value:
                headers[name] = value
        key = self._keys.get(deployment.name)
        if key:
            headers["x-api-key"] = key
        return headers

    def _error(self, deployment: Deployment, message: str, **kwargs: Any) -> UpstreamError:
        return upstream_error(self._redact, deployment.name, message, **kwargs)

    def _status_error(self, deployment: Deployment, status: int, content: bytes) -> UpstreamError:
        return status_error(self._redact, deployment.name, status, content, _message)


def _for_litellm(deployment: Deployment) -> Deployment:
    """The deployment as litellm's Anthropic provider takes it: an `anthropic/` model."""
    model = "anthropic/" + deployment.anthropic_model
    return dataclasses.replace(deployment, model=model, transport="litellm")


def _stream_timeout(deployment: Deployment) -> aiohttp.ClientTimeout:
    # Per read, as for OpenAI-format streams: a long answer arriving steadily is not cut off.
    timeout_s = deployment.timeout_s
    return aiohttp.ClientTimeout(
        total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
    )


def _proxy(url: URL) -> URL | None:
    try:
        proxy, _ = get_env_proxy_for_url(url)
    except LookupError:
        return None
    return proxy


def _timeout_text(deployment: Deployment) -> str:
    return f"no answer within {deployment.timeout_s:g}s"


def _message(body: Any) -> str:
    """The message of an Anthropic error body ({"type": "error", "error": {...}})."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            kind = error.get("type")
            return f"{kind}: {error['message']}" if kind else str(error["message"])
    return str(body)
