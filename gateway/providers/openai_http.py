"""Direct calls to OpenAI-compatible servers over one pooled aiohttp session (no SDK layers).

aiohttp rather than httpx: on the request path httpx cost 1.1-1.5 ms a call against aiohttp's
0.4-0.5 ms (issue 19). What is per deployment (URL, headers, timeouts, proxy) is built once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.providers.plain_http import PlainHTTP, PlainTarget, UpstreamProtocolError
from gateway.providers.pooled import (
    PooledSession,
    describe,
    read_lines,
    status_error,
    upstream_error,
)
from gateway.scrub import Redactor
from policies import Deployment


@dataclass(frozen=True, slots=True)
class _Target:
    """What a call to one deployment needs that does not change between calls."""

    url: URL
    embeddings_url: URL
    headers: Mapping[str, str]
    # A plain call has `timeout_s` in all; a stream has it per read (first byte, then between
    # chunks), so that a long answer arriving steadily is not cut off.
    plain_timeout: aiohttp.ClientTimeout
    stream_timeout: aiohttp.ClientTimeout
    proxy: URL | None
    proxy_auth: aiohttp.BasicAuth | None
    # Plain calls to an http:// URL without a proxy go through PlainHTTP (None: aiohttp).
    plain: PlainTarget | None
    plain_embeddings: PlainTarget | None


class OpenAIHTTPProvider:
    """POST {api_base}/chat/completions (or /embeddings) with the client's body, model id
    swapped."""

    def __init__(
        self,
        api_keys: Mapping[str, str],
        *,
        max_connections: int = 512,
        redactor: Redactor | None = None,
    ) -> None:
        self._keys = api_keys
        # Upstream text reaches the client and the log: no secret may ride along in it.
        self._redact = redactor or Redactor(api_keys.values())
        # By name and URL: a local deployment's replicas are one name at several URLs.
        self._targets: dict[tuple[str, str | None], _Target] = {}
        self._pool = PooledSession(max_connections)
        self._plain = PlainHTTP(max_connections)

    async def aclose(self) -> None:
        await self._plain.aclose()
        await self._pool.aclose()

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        target = self._target(deployment)
        body = orjson.dumps({**payload, "stream": False, "model": deployment.upstream_model})
        return await self._post(deployment, target, target.url, body, target.plain)

    async def embed(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        target = self._target(deployment)
        body = orjson.dumps({**payload, "model": deployment.upstream_model})
        return await self._post(
            deployment, target, target.embeddings_url, body, target.plain_embeddings
        )

    async def _post(
        self,
        deployment: Deployment,
        target: _Target,
        url: URL,
        body: bytes,
        plain: PlainTarget | None,
    ) -> dict[str, Any]:
        """One plain (not streamed) call: the decoded JSON answer, or an UpstreamError."""
        if plain is not None:
            try:
                status, content = await self._plain.post(plain, body, deployment.timeout_s)
            except TimeoutError as exc:
                raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
            except (OSError, UpstreamProtocolError) as exc:
                raise self._error(deployment, f"connection failed: {describe(exc)}") from exc
            return self._answer(deployment, status, content)
        try:
            async with self._pool.get().post(
                url,
                data=body,
                headers=target.headers,
                timeout=target.plain_timeout,
                proxy=target.proxy,
                proxy_auth=target.proxy_auth,
                allow_redirects=False,  # as httpx: the body and key go nowhere else
            ) as response:
                status = response.status
                content = await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except aiohttp.ClientError as exc:
            raise self._error(deployment, f"connection failed: {describe(exc)}") from exc
        return self._answer(deployment, status, content)

    def _answer(self, deployment: Deployment, status: int, content: bytes) -> dict[str, Any]:
        if status >= 400:
            raise self._status_error(deployment, status, content)
        try:
            answer: dict[str, Any] = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(deployment.name, "the response is not JSON") from exc
        return answer

    async def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        target = self._target(deployment)
        body = orjson.dumps(
            {
                **payload,
                "stream": True,
                "stream_options": {"include_usage": True},
                "model": deployment.upstream_model,
            }
        )
        try:
            response = await self._pool.get().post(
                target.url,
                data=body,
                headers=target.headers,
                timeout=target.stream_timeout,
                proxy=target.proxy,
                proxy_auth=target.proxy_auth,
                allow_redirects=False,  # as httpx: the body and key go nowhere else
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except aiohttp.ClientError as exc:
            raise self._error(deployment, f"connection failed: {describe(exc)}") from exc
        try:
            if response.status >= 400:
                raise self._status_error(deployment, response.status, await response.read())
            async with aclosing(read_lines(response.content)) as batches:
                async for lines in batches:
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            return
                        chunk = orjson.loads(data)
                        if "error" in chunk:
                            message = _message(chunk)
                            raise self._error(deployment, message, code="upstream_stream_error")
                        yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise self._error(deployment, f"the stream broke off: {describe(exc)}") from exc
        finally:
            # Back to the pool when the body was read to its end; closed when it was not.
            response.release()

    def _target(self, deployment: Deployment) -> _Target:
        key = (deployment.name, deployment.api_base)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = self._build_target(deployment)
        return target

    def _build_target(self, deployment: Deployment) -> _Target:
        if not deployment.api_base:
            raise UpstreamError(deployment.name, "no api_base is configured")
        base = deployment.api_base.rstrip("/")
        url = URL(base + "/chat/completions")
        headers = {"content-type": "application/json"}
        key = self._keys.get(deployment.name)
        if key:
            headers["authorization"] = f"Bearer {key}"
        # As httpx did (trust_env): HTTP(S)_PROXY and NO_PROXY apply, read once per deployment.
        try:
            proxy, proxy_auth = get_env_proxy_for_url(url)
        except LookupError:
            proxy, proxy_auth = None, None
        timeout_s = deployment.timeout_s
        embeddings_url = URL(base + "/embeddings")
        direct = url.scheme == "http" and proxy is None
        return _Target(
            url=url,
            embeddings_url=embeddings_url,
            headers=headers,
            plain_timeout=aiohttp.ClientTimeout(total=timeout_s),
            stream_timeout=aiohttp.ClientTimeout(
                total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
            ),
            proxy=proxy,
            proxy_auth=proxy_auth,
            plain=PlainTarget.build(url, headers) if direct else None,
            plain_embeddings=PlainTarget.build(embeddings_url, headers) if direct else None,
        )

    def _error(self, deployment: Deployment, message: str, **kwargs: Any) -> UpstreamError:
        return upstream_error(self._redact, deployment.name, message, **kwargs)

    def _status_error(self, deployment: Deployment, status: int, content: bytes) -> UpstreamError:
        return status_error(self._redact, deployment.name, status, content, _message)


def _timeout_text(deployment: Deployment) -> str:
    return f"no answer within {deployment.timeout_s:g}s"


def _message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)
