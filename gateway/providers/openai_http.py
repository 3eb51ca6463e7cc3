"""Direct calls to OpenAI-compatible servers over one pooled HTTP client (no SDK layers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from gateway.errors import UpstreamBadRequest, UpstreamError, UpstreamTimeout
from gateway.scrub import Redactor
from policies import Deployment

_CLIENT_ERRORS = {400, 413, 422}
# Upstream text is cut to this length after redaction, so that a cut never leaves part of a
# secret where the whole one would have been redacted.
_MAX_MESSAGE = 1000


class OpenAIHTTPProvider:
    """POST {api_base}/chat/completions with the client's body, model id swapped."""

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
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        request = self._request(deployment, {**payload, "stream": False})
        try:
            response = await self._client.send(request)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except httpx.TransportError as exc:
            raise self._error(deployment, f"connection failed: {exc!r}") from exc
        if response.status_code >= 400:
            raise self._status_error(deployment, response.status_code, response.content)
        try:
            body: dict[str, Any] = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(deployment.name, "the response is not JSON") from exc
        return body

    async def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        request = self._request(deployment, body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except httpx.TransportError as exc:
            raise self._error(deployment, f"connection failed: {exc!r}") from exc
        try:
            if response.status_code >= 400:
                raise self._status_error(deployment, response.status_code, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise self._error(deployment, _message(chunk), code="upstream_stream_error")
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(deployment.name, _timeout_text(deployment)) from exc
        except (httpx.TransportError, orjson.JSONDecodeError) as exc:
            raise self._error(deployment, f"the stream broke off: {exc!r}") from exc
        finally:
            await response.aclose()

    def _error(self, deployment: Deployment, message: str, **kwargs: Any) -> UpstreamError:
        return UpstreamError(deployment.name, self._redact(message)[:_MAX_MESSAGE], **kwargs)

    def _status_error(self, deployment: Deployment, status: int, content: bytes) -> UpstreamError:
        try:
            message = _message(orjson.loads(content))
        except orjson.JSONDecodeError:
            message = content.decode(errors="replace") or "no body"
        kind = UpstreamBadRequest if status in _CLIENT_ERRORS else UpstreamError
        clean = self._redact(message)[:_MAX_MESSAGE]
        return kind(deployment.name, clean, upstream_status=status)

    def _request(self, deployment: Deployment, body: dict[str, Any]) -> httpx.Request:
        if not deployment.api_base:
            raise UpstreamError(deployment.name, "no api_base is configured")
        headers = {"content-type": "application/json"}
        key = self._keys.get(deployment.name)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return self._client.build_request(
            "POST",
            deployment.api_base.rstrip("/") + "/chat/completions",
            content=orjson.dumps({**body, "model": deployment.upstream_model}),
            headers=headers,
            timeout=httpx.Timeout(deployment.timeout_s),
        )


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
