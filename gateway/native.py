"""Requests served in the client's own API: an upstream that speaks it gets the body as is.

An Anthropic request (`POST /v1/messages`) routed to an Anthropic-native deployment is sent
as the client wrote it, and its answer relayed as the upstream wrote it; the pipeline still
meters, caches and settles it through the OpenAI-shaped translation each provider adds.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from policies import Deployment

# Where a completion or a chunk carries its form in the client's API, as the upstream sent it:
# a completion's whole message, a chunk's one event ({"event": name, "data": {...}}).
NATIVE = "_native"


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """The client's body in an upstream API's own shape, with what only that API can serve."""

    api: str  # "anthropic"
    body: dict[str, Any]
    headers: Mapping[str, str]  # the API's own headers to pass on (anthropic-version, -beta)
    # Fields (name, why) that no translation carries: a deployment not speaking `api` refuses.
    native_only: tuple[tuple[str, str], ...] = field(default=())

    def cache_variant(self) -> str:
        """What sets two requests apart beyond their translation (the native-only fields)."""
        if not self.native_only:
            return ""
        fields = {name.split(".")[0] for name, _ in self.native_only}
        picked = {name: self.body.get(name) for name in sorted(fields)}
        return hashlib.sha256(orjson.dumps(picked, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class NativeProvider(Protocol):
    """Calls deployments in one upstream API's own shape."""

    def speaks(self, deployment: Deployment) -> bool:
        """Whether the deployment takes requests in this API as they are."""
        ...

    async def complete_native(
        self, deployment: Deployment, request: NativeRequest
    ) -> dict[str, Any]:
        """An OpenAI-shaped completion, the upstream's own answer under NATIVE."""
        ...

    def stream_native(
        self, deployment: Deployment, request: NativeRequest
    ) -> AsyncIterator[dict[str, Any]]:
        """OpenAI-shaped chunks, each upstream event under NATIVE (usage on the last)."""
        ...
