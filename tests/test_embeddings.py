"""POST /v1/embeddings through the official openai SDK: configured embedding models, budgeted
and logged at exact cost; `auto`, tiers and chat models refused with a clear 400."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from gateway.llm import model_info
from gateway.settings import ConfigError, Settings, build_catalog
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import EMBED_TOKENS, RunningUpstream, embedding

EMBED_PRICE = {"input_per_mtok": "0.013", "output_per_mtok": "0"}
TEXTS = ["the first text", "a second, longer text to embed"]


def embedding_config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    """The usual fake-upstream models plus embedding models through both transports."""
    config = gateway_config(store_url, upstream)

    def model(name: str, model: str, transport: str = "openai_http", **extra: Any) -> dict:
        return {
            "name": name,
            "model": model,
            "api_base": upstream.base_url,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": transport,
            **extra,
        }

    config["models"] += [
        # Mode and price from litellm's model info: text-embedding-3-small is `mode: embedding`.
        model("embed", "openai/text-embedding-3-small"),
        model("embed-litellm", "openai/text-embedding-3-small", "litellm"),
        model("embed-priced", "openai/fake-embed", mode="embedding", price=EMBED_PRICE),
        model("embed-nousage", "openai/fake-nousage", mode="embedding", price=EMBED_PRICE),
        model("embed-500", "openai/fake-500", mode="embedding", price=EMBED_PRICE),
    ]
    return config


@pytest.fixture
async def gw(store_url: str, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(embedding_config(store_url, upstream)) as gateway:
        yield gateway


def sdk(gw: InProcessGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client)


def litellm_price() -> Decimal:
    info = model_info("openai/text-embedding-3-small")
    assert info is not None and info.price is not None and info.mode == "embedding"
    return info.price.input


@pytest.mark.parametrize("model", ["embed", "embed-litellm"])
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_sdk_embeddings_decode_to_the_upstreams_vectors(
    gw: InProcessGateway, upstream: RunningUpstream, model: str, encoding: str
) -> None:
    # Left out, the SDK asks for base64 and decodes it to floats itself.
    extra: dict[str, Any] = {"encoding_format": "float"} if encoding == "float" else {}
    raw = await sdk(gw).embeddings.with_raw_response.create(model=model, input=TEXTS, **extra)
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding(0), embedding(1)]
    assert result.usage.prompt_tokens == EMBED_TOKENS * 2
    assert upstream.fake.requests[-1]["body"]["encoding_format"] == encoding
    assert upstream.fake.requests[-1]["body"]["model"] == "text-embedding-3-small"
    assert raw.headers["x-rightsize-model"] == model


async def test_embeddings_are_logged_at_litellms_exact_price_for_the_upstreams_tokens(
    gw: InProcessGateway,
) -> None:
    raw = await sdk(gw).embeddings.with_raw_response.create(model="embed", input=TEXTS)
    cost = litellm_price() * EMBED_TOKENS * 2
    assert Decimal(raw.headers["x-rightsize-cost-usd"]) == cost
    row = await gw.admin.spend(raw.headers["x-request-id"])
    assert (row["status"], row["deployment"], row["requested_model"]) == (200, "embed", "embed")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (EMBED_TOKENS * 2, 0)
    assert Decimal(row["cost_usd"]) == cost and not row["usage_estimated"]
    assert row["route_reason"].startswith("embeddings:")


async def test_embeddings_of_token_ids_are_served(gw: InProcessGateway) -> None:
    result = await sdk(gw).embeddings.create(model="embed-priced", input=[[1, 2, 3], [4, 5]])
    assert len(result.data) == 2


async def test_an_upstream_without_usage_is_billed_by_the_gateways_count(
    gw: InProcessGateway,
) -> None:
    raw = await sdk(gw).embeddings.with_raw_response.create(model="embed-nousage", input="hello")
    row = await gw.admin.spend(raw.headers["x-request-id"])
    assert row["usage_estimated"] and row["prompt_tokens"] == 1  # "hello": one cl100k token
    assert Decimal(row["cost_usd"]) == Decimal("0.013") / 1_000_000


async def test_embeddings_are_held_and_settled_against_the_teams_budget(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    cost = Decimal("0.013") * EMBED_TOKENS / 1_000_000
    body = {"team": "search", "period": "total", "limit_usd": str(cost)}
    assert (await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)).is_success
    client = sdk(gw)
    await client.embeddings.create(model="embed-priced", input="x")
    usage = await gw.client.get("/admin/teams/search/usage", headers=gw.admin.headers)
    [total] = usage.json()["data"]
    assert (Decimal(total["spent_usd"]), total["reserved_usd"]) == (cost, "0")
    sent = len(upstream.fake.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.embeddings.create(model="embed-priced", input="x")
    assert refused.value.code == "budget_exceeded"
    assert len(upstream.fake.requests) == sent  # refused before the upstream was called
    row = await gw.admin.spend(refused.value.response.headers["x-request-id"])
    assert (row["status"], row["error_type"], row["deployment"]) == (
        429,
        "budget_exceeded",
        "embed-priced",
    )


@pytest.mark.parametrize(
    ("model", "code"),
    [("auto", "model_not_routable"), ("light", "model_not_routable")],
)
async def test_auto_and_tiers_are_a_400_naming_the_embedding_models(
    gw: InProcessGateway, model: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(gw).embeddings.create(model=model, input="x")
    assert refused.value.code == code and refused.value.param == "model"
    assert "embed-priced" in refused.value.message and "embedding" in refused.value.message


async def test_a_chat_model_is_a_400_and_an_unknown_one_a_404(gw: InProcessGateway) -> None:
    client = sdk(gw)
    with pytest.raises(openai.BadRequestError) as chat_model:
        await client.embeddings.create(model="direct", input="x")
    assert chat_model.value.code == "not_an_embedding_model"
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.embeddings.create(model="nope", input="x")
    assert unknown.value.code == "model_not_found"


async def test_an_embedding_model_on_chat_completions_is_a_400(gw: InProcessGateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(gw).chat.completions.create(
            model="embed", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "embedding_model"
    assert "/v1/embeddings" in refused.value.message


async def test_an_embedding_upstreams_failure_is_a_502_naming_its_api_base(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        await sdk(gw).with_options(max_retries=0).embeddings.create(model="embed-500", input="x")
    assert failed.value.status_code == 502
    assert upstream.base_url in failed.value.message and "'embed-500'" in failed.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "embed"}, "input"),
    ],
)
async def test_invalid_embedding_bodies_are_400_naming_the_field(
    gw: InProcessGateway, body: dict[str, Any], param: str
) -> None:
    response = await gw.client.post("/v1/embeddings", json=body, headers=gw.auth)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_embeddings_need_a_key(gw: InProcessGateway) -> None:
    response = await gw.client.post("/v1/embeddings", json={"model": "embed", "input": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_litellms_model_info_makes_an_embedding_model_and_keeps_it_out_of_tiers(
    upstream: RunningUpstream, tmp_path: Any
) -> None:
    config = embedding_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    catalog = build_catalog(Settings.model_validate(config), model_info)
    embed, chat = catalog.get("embed"), catalog.get("direct")
    assert embed is not None and embed.embedding and embed.price.input == litellm_price()
    assert chat is not None and not chat.embedding
    config["models"][-1]["tier"] = "light"
    with pytest.raises(ConfigError, match=r"models\[\d+\]\.tier.*embedding model"):
        build_catalog(Settings.model_validate(config), model_info)


def test_a_tier_naming_an_embedding_model_is_a_config_error(
    upstream: RunningUpstream, tmp_path: Any
) -> None:
    config = embedding_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    config["policy"] = {"tiers": [{"name": "light", "deployments": ["small", "embed"]}]}
    with pytest.raises(ConfigError, match=r"policy\.tiers\[0\]\.deployments\[1\]"):
        build_catalog(Settings.model_validate(config), model_info)


async def test_embedding_models_are_listed_and_retrievable(gw: InProcessGateway) -> None:
    client = sdk(gw)
    listed = {m.id async for m in client.models.list()}
    assert {"embed", "embed-litellm"} <= listed
    assert (await client.models.retrieve("embed")).id == "embed"
