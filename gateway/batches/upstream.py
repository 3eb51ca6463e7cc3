"""A provider's own batch API, OpenAI's format: upload a JSONL, create a batch, poll it, read its
output file, cancel it. Off the request path, so httpx (not the pooled aiohttp session)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

from gateway.scrub import Redactor
from policies import Deployment

_OPENAI = "https://api.openai.com/v1"


class ProviderBatchError(RuntimeError):
    """The provider's batch API refused or failed a call."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    @property
    def no_batch_api(self) -> bool:
        """The server has no such route: an OpenAI-compatible server without a batch API."""
        return self.status in (404, 405, 501)


def takes_batches(deployment: Deployment) -> bool:
    """Whether the deployment's upstream has OpenAI's batch API: an OpenAI-format remote one.
    A local engine or an Anthropic upstream runs its lines one by one instead."""
    if deployment.local or deployment.engine is not None or deployment.speaks_anthropic:
        return False
    provider, sep, _ = deployment.model.partition("/")
    return deployment.transport == "openai_http" or (sep != "" and provider == "openai")


class ProviderBatches:
    """OpenAI's /v1/files and /v1/batches on each deployment's api_base, with its API key."""

    def __init__(
        self,
        api_keys: Mapping[str, str],
        *,
        redactor: Redactor | None = None,
        timeout_s: float = 60,
    ) -> None:
        self._keys = api_keys
        self._redact = redactor or Redactor(api_keys.values())
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def submit(
        self, deployment: Deployment, lines: Sequence[dict[str, Any]]
    ) -> tuple[str, str]:
        """Upload the lines and create their batch: (upstream file id, upstream batch id)."""
        jsonl = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        uploaded = await self._call(
            deployment,
            "POST",
            "/files",
            data={"purpose": "batch"},
            files={"file": ("rightsize-batch.jsonl", jsonl, "application/jsonl")},
        )
        created = await self._call(
            deployment,
            "POST",
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        return str(uploaded["id"]), str(created["id"])

    async def retrieve(self, deployment: Deployment, batch_id: str) -> dict[str, Any]:
        return await self._call(deployment, "GET", f"/batches/{batch_id}")

    async def cancel(self, deployment: Deployment, batch_id: str) -> dict[str, Any]:
        return await self._call(deployment, "POST", f"/batches/{batch_id}/cancel")

    async def results(self, deployment: Deployment, file_id: str) -> list[dict[str, Any]]:
        """The lines of an output or error file."""
        response = await self._send(deployment, "GET", f"/files/{file_id}/content")
        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]

    async def _call(self, deployment: Deployment, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._send(deployment, method, path, **kwargs)).json()

    async def _send(
        self, deployment: Deployment, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        base = (deployment.api_base or _OPENAI).rstrip("/")
        headers = {}
        key = self._keys.get(deployment.name)
        if key:
            headers["authorization"] = f"Bearer {key}"
        response = await self._client.request(method, base + path, headers=headers, **kwargs)
        if response.status_code >= 400:
            # Upstream text reaches the error file and the log: no secret rides along.
            raise ProviderBatchError(
                f"{deployment.name}: {method} {path} answered {response.status_code}: "
                f"{self._redact(response.text[:300])}",
                response.status_code,
            )
        return response
