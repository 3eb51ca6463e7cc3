"""Answers the official SDKs (and people) understand: unknown paths name the supported
endpoints, a day's budget 429 is not retried, a 502 names every attempt's api_base, and
models.retrieve works for every name a key may send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

HELLO = [{"role": "user", "content": "hi"}]
ENDPOINTS = (
    "POST /v1/chat/completions",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /v1/embeddings",
    "GET /v1/models",
    "GET /v1/models/{model_id:path}",
)


def config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    """The fake-upstream models, with a tier `broken` of two failing deployments."""
    settings = gateway_config(store_url, upstream)
    for model in settings["models"]:
        if model["name"] in ("direct-500", "small-500"):
            model["tier"] = "broken"
    return settings


@pytest.fixture
async def gw(store_url: str, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(config(store_url, upstream)) as running:
        yield running


def openai_sdk(gw: InProcessGateway, **options: Any) -> openai.AsyncOpenAI:
    """The client as a user builds it: default retries unless told otherwise."""
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, **options
    )


def anthropic_sdk(gw: InProcessGateway, **options: Any) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app), base_url="http://gateway")
    return anthropic.AsyncAnthropic(
        base_url="http://gateway", api_key=gw.key, http_client=http, **options
    )


async def refused_rows(gw: InProcessGateway, expected: int) -> list[dict[str, Any]]:
    """The team's 429 spend rows once `expected` are written, plus any that come later."""
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        response = await gw.client.get(
            "/admin/spend", params={"team": "search"}, headers=gw.admin.headers
        )
        rows = [r for r in response.json()["data"] if r["status"] == 429]
        if len(rows) >= expected:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # past several flushes of the writer: a retry's row would be here
    response = await gw.client.get(
        "/admin/spend", params={"team": "search"}, headers=gw.admin.headers
    )
    return [r for r in response.json()["data"] if r["status"] == 429]


async def spend_the_budget(gw: InProcessGateway, period: str) -> None:
    body = {"team": "search", "period": period, "limit_usd": "0.00001"}
    assert (await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)).is_success
    # The first request gets the budget's last stretch (docs/budgets.md); the next, none.
    first = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "direct", "messages": HELLO, "max_tokens": 7},
        headers=gw.auth,
    )
    assert first.status_code == 200, first.text


# Without the header: openai 2.x retries a 429 whose retry-after is missing (a total budget) or
# at most 60 s (a daily budget in its last minute) twice; anthropic retries every one, after
# waiting out retry-after (hours for a daily budget).
@pytest.mark.parametrize("period", ["daily", "total"])
async def test_the_default_openai_client_does_not_retry_a_budget_429(
    gw: InProcessGateway, period: str
) -> None:
    await spend_the_budget(gw, period)
    client = openai_sdk(gw)
    assert client.max_retries == 2  # the SDK's default: it would send the request thrice
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="direct", messages=HELLO, max_tokens=7)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.code == "budget_exceeded"
    assert len(await refused_rows(gw, 1)) == 1


@pytest.mark.parametrize("period", ["daily", "total"])
async def test_the_default_anthropic_client_does_not_retry_a_budget_429(
    gw: InProcessGateway, period: str
) -> None:
    await spend_the_budget(gw, period)
    client = anthropic_sdk(gw)
    assert client.max_retries == 2
    request = client.messages.create(model="direct", max_tokens=7, messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError):
        # Without x-should-retry: false the SDK waits out retry-after (hours) before its retry.
        await asyncio.wait_for(request, timeout=20)
    assert len(await refused_rows(gw, 1)) == 1


async def test_a_502_names_the_deployment_and_api_base_of_each_attempt(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    client = openai_sdk(gw, max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="broken", messages=HELLO)
    message = failed.value.message
    assert failed.value.status_code == 502
    assert "All 2 upstream attempts failed" in message
    for name in ("direct-500", "small-500"):
        assert f"deployment {name!r} at {upstream.base_url} failed" in message
    assert "the fake upstream fell over" in message


async def test_a_pinned_models_502_names_its_api_base(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        await openai_sdk(gw, max_retries=0).chat.completions.create(
            model="direct-500", messages=HELLO
        )
    assert f"deployment 'direct-500' at {upstream.base_url} failed (status 500)" in (
        failed.value.message
    )


async def test_an_unsupported_openai_path_is_a_404_naming_the_supported_endpoints(
    gw: InProcessGateway,
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await openai_sdk(gw).completions.create(model="small", prompt="hi")
    assert missing.value.code == "not_found"
    assert "Unknown path /v1/completions" in missing.value.message
    for endpoint in ENDPOINTS:
        assert endpoint in missing.value.message


async def test_a_wrong_method_is_a_405_naming_the_supported_endpoints(
    gw: InProcessGateway,
) -> None:
    response = await gw.client.get("/v1/chat/completions", headers=gw.auth)
    assert response.status_code == 405
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert "GET is not allowed on /v1/chat/completions" in error["message"]
    assert "POST /v1/chat/completions" in error["message"]


async def test_an_unsupported_anthropic_path_is_an_anthropic_shaped_404(
    gw: InProcessGateway,
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        # Message Batches are served now (docs/batches.md): a path under /v1/messages that is not.
        await anthropic_sdk(gw).get("/v1/messages/archive", cast_to=object)
    body = missing.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "Unknown path /v1/messages/archive" in body["error"]["message"]
    assert "POST /v1/messages" in body["error"]["message"]


@pytest.mark.parametrize("name", ["auto", "light", "standard", "small", "direct-cached"])
async def test_models_retrieve_answers_every_name_a_key_may_send(
    gw: InProcessGateway, name: str
) -> None:
    model = await openai_sdk(gw).models.retrieve(name)
    assert (model.id, model.object, model.owned_by) == (name, "model", "rightsize")


async def test_models_retrieve_of_an_unknown_name_is_an_openai_shaped_404(
    gw: InProcessGateway,
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await openai_sdk(gw).models.retrieve("gpt-nothing")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"


async def test_models_retrieve_hides_a_model_the_key_may_not_use(gw: InProcessGateway) -> None:
    restricted = await gw.admin.key("search", allowed_models=["small"])
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=restricted["key"], http_client=gw.client
    )
    assert (await client.models.retrieve("small")).id == "small"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("direct")
