"""The provider interface: one OpenAI-shaped call, plain or streamed, to one deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from policies import Deployment


class Provider(Protocol):
    """Calls a deployment. Errors are raised as gateway UpstreamError subclasses."""

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion, as an OpenAI-shaped dict."""
        ...

    def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Chat-completion chunks, the last one carrying usage when the upstream sends it."""
        ...

    async def aclose(self) -> None: ...
