"""Calls through litellm, which translates to each provider's own API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.errors import UpstreamBadRequest, UpstreamError, UpstreamTimeout
from gateway.llm import litellm
from gateway.scrub import Redactor
from policies import Deployment

_CLIENT_ERRORS = {400, 413, 422}
# litellm's UnsupportedParamsError names the parameters thus: "does not support parameters: [...]"
_UNSUPPORTED = re.compile(r"does not support parameters: (\[[^\]]*\])")
# Parameters litellm reads for itself; the client's values must not reach it under these names.
_GATEWAY_ONLY = {"model", "stream", "stream_options", "metadata"}


class LiteLLMProvider:
    """litellm.acompletion with retries off: retries and fallbacks are the gateway's job."""

    def __init__(self, api_keys: Mapping[str, str], *, redactor: Redactor | None = None) -> None:
        self._keys = api_keys
        # litellm's exception text quotes the upstream's error body, which may echo the key.
        self._redact = redactor or Redactor(api_keys.values())
        self._lib = litellm()

    async def aclose(self) -> None:
        return None

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._lib.acompletion(**self._kwargs(deployment, payload))
        except Exception as exc:
            raise _translate(deployment, exc, self._redact) from exc
        return _openai_shape(response.model_dump(exclude_none=True))

    async def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        kwargs = self._kwargs(deployment, payload)
        try:
            response = await self._lib.acompletion(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
            async for chunk in response:
                yield _openai_shape(chunk.model_dump(exclude_none=True))
        except UpstreamError:
            raise
        except Exception as exc:
            raise _translate(deployment, exc, self._redact) from exc

    async def embed(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in payload.items() if k != "model" and v is not None}
        kwargs.update(model=deployment.model, timeout=deployment.timeout_s, num_retries=0)
        if deployment.api_base:
            kwargs["api_base"] = deployment.api_base
        key = self._keys.get(deployment.name)
        if key:
            kwargs["api_key"] = key
        try:
            response = await self._lib.aembedding(**kwargs)
        except Exception as exc:
            raise _translate(deployment, exc, self._redact) from exc
        # warnings off: litellm's type says floats, and base64 strings are what was asked for.
        data: dict[str, Any] = response.model_dump(exclude_none=True, warnings=False)
        return data

    def _kwargs(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        # An explicit null means "the default" in the OpenAI API; litellm takes some of them
        # for values (web_search_options: null fails inside it), so nulls are left out.
        kwargs = {k: v for k, v in payload.items() if k not in _GATEWAY_ONLY and v is not None}
        kwargs.update(
            model=deployment.model,
            timeout=deployment.timeout_s,
            num_retries=0,
        )
        if kwargs.get("tools"):
            # With tools, litellm first asks its proxy's MCP gateway whether they are MCP
            # tools, which imports the `mcp` package (not installed: litellm does not depend
            # on it) and fails every such call as a 500. The gateway has no MCP tools to find;
            # this is litellm's own switch for skipping that step.
            kwargs["_skip_mcp_handler"] = True
        if deployment.api_base:
            kwargs["api_base"] = deployment.api_base
        key = self._keys.get(deployment.name)
        if key:
            kwargs["api_key"] = key
        return kwargs


def _openai_shape(data: dict[str, Any]) -> dict[str, Any]:
    """Drop litellm's own bookkeeping fields so clients see the OpenAI shape."""
    data.pop("provider_specific_fields", None)
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict):
                choice[part].pop("provider_specific_fields", None)
        message = choice.get("message")
        for call in (message.get("tool_calls") or ()) if isinstance(message, dict) else ():
            # litellm numbers a whole message's tool calls (Anthropic's), as only stream deltas
            # are: a client sending the message back as it came would be refused for it.
            if isinstance(call, dict):
                call.pop("index", None)
    return data


def _unsupported_text(deployment: Deployment, message: str) -> str:
    found = _UNSUPPORTED.search(message)
    names = found.group(1) if found else "some of the parameters sent"
    return f"Model {deployment.name!r} does not take {names}; leave them out"


def _translate(deployment: Deployment, exc: Exception, redact: Redactor) -> UpstreamError:
    lib = litellm()
    message = redact(str(getattr(exc, "message", None) or exc))
    status = getattr(exc, "status_code", None)
    if isinstance(exc, lib.UnsupportedParamsError):
        # Its text advises litellm's own drop_params setting, which no client of ours can set.
        return UpstreamBadRequest(
            deployment.name, _unsupported_text(deployment, message), upstream_status=400
        )
    if isinstance(exc, lib.Timeout):
        return UpstreamTimeout(deployment.name, f"no answer within {deployment.timeout_s:g}s")
    if isinstance(status, int) and status in _CLIENT_ERRORS:
        return UpstreamBadRequest(deployment.name, message, upstream_status=status)
    return UpstreamError(
        deployment.name, message, upstream_status=status if isinstance(status, int) else None
    )
