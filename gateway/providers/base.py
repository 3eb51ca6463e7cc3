"""The provider interface: one OpenAI-shaped call, plain or streamed, to one deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Calls an embedding deployment: POST /v1/embeddings's body in, its answer out."""

    async def embed(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI-shaped embeddings response (`data`, `model`, `usage`)."""
        ...
