"""Calls to local engines: a replica picked per request, the next one tried on failure.

The HTTP itself is the pooled openai_http transport's; this adds the choice of replica and
reports each call's outcome to the local backend (load, breaker, prefix affinity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import UpstreamBadRequest, UpstreamError
from gateway.providers.openai_http import OpenAIHTTPProvider
from local_backend import LocalBackend, Pick, Replica
from policies import Deployment


class LocalProvider:
    """A deployment with an `engine`: its healthy replicas, best first, until one answers."""

    def __init__(self, backend: LocalBackend, http: OpenAIHTTPProvider) -> None:
        self._backend = backend
        self._http = http

    async def aclose(self) -> None:
        """The HTTP transport is shared with plain openai_http deployments: closed by its owner."""

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        pick = self._pick(deployment, payload)
        failure: UpstreamError | None = None
        for replica in pick.replicas:
            self._backend.sent(pick, replica)
            try:
                answer = await self._http.complete(_at(deployment, replica), payload)
            except UpstreamBadRequest:
                self._backend.finished(replica, None)  # the request's fault, not the replica's
                raise
            except UpstreamError as exc:
                self._backend.finished(replica, exc.message)
                failure = exc
                continue
            except BaseException:
                self._backend.finished(replica, None)
                raise
            self._backend.finished(replica, None)
            return answer
        raise _none_left(deployment, failure)

    async def stream(
        self, deployment: Deployment, payload: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        pick = self._pick(deployment, payload)
        failure: UpstreamError | None = None
        for replica in pick.replicas:
            self._backend.sent(pick, replica)
            chunks = self._http.stream(_at(deployment, replica), payload)
            error: str | None = None
            try:
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    return
                except UpstreamBadRequest:
                    raise
                except UpstreamError as exc:
                    # Nothing reached the client yet: the next replica may still answer.
                    error, failure = exc.message, exc
                    continue
                yield first
                async for chunk in chunks:
                    yield chunk
                return
            except UpstreamBadRequest:
                raise
            except UpstreamError as exc:
                error = exc.message
                raise
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
                self._backend.finished(replica, error)
        raise _none_left(deployment, failure)

    def _pick(self, deployment: Deployment, payload: dict[str, Any]) -> Pick:
        return self._backend.pick(deployment, payload.get("messages") or [])


def _at(deployment: Deployment, replica: Replica) -> Deployment:
    """The deployment as one replica serves it (the transport keys its targets by URL too)."""
    return dataclasses.replace(deployment, api_base=replica.url)


def _none_left(deployment: Deployment, failure: UpstreamError | None) -> UpstreamError:
    if failure is not None:
        return failure
    return UpstreamError(deployment.name, "no replica is healthy", code="no_healthy_replica")
