"""Session stickiness through the gateway: a conversation whose first turn needed the reasoning
tier keeps it for an easy follow-up, within the TTL, per key, across replicas on Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.settings import Settings, StickinessSettings, load_settings
from gateway.state import Gateway
from gateway.stickiness import (
    Conversation,
    MemoryStickiness,
    RedisStickiness,
    Stickiness,
    conversation_of,
)
from tests.cache_support import delete_prefix, shared_redis
from tests.conftest import (
    Admin,
    InProcessGateway,
    gateway_config,
    gateway_env,
    in_process_gateway,
)
from tests.fake_upstream import ANSWER, RunningUpstream

SYSTEM = {"role": "system", "content": "You are a careful mathematician."}
PROOF = (
    "Prove that for every integer n >= 1, the number n^5 - n is divisible by 30. Proceed in "
    "steps: first show divisibility by 2, then by 3, then by 5, and conclude."
)
FOLLOW_UP = "thanks, and what is 2+2?"
TURN_1 = [SYSTEM, {"role": "user", "content": PROOF}]
TURN_2 = [*TURN_1, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": FOLLOW_UP}]
FRESH = [SYSTEM, {"role": "user", "content": FOLLOW_UP}]
TIERS = ("light", "reasoning")


class Clock:
    """Wall-clock seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_796_300_000.0  # 2026-12-03T..., a fixed instant

    def __call__(self) -> float:
        return self.now


def stickiness_config(
    store_url: str, upstream: RunningUpstream, reasoning: str = "direct", **sticky: Any
) -> dict[str, Any]:
    # The proof's demand (0.85 with the shipped artifact) is past 0.7, the follow-up's (0.07)
    # far below: without stickiness they go to different tiers.
    config = gateway_config(
        store_url,
        upstream,
        policy={
            "tiers": [
                {"name": "light", "deployments": ["small"]},
                {"name": "reasoning", "deployments": [reasoning], "min_demand": 0.7},
            ],
            "retries": {"max_attempts": 1},
        },
    )
    config["routing"] = {"stickiness": sticky}
    return config


@asynccontextmanager
async def sticky_gateway(
    tmp_path: Path,
    upstream: RunningUpstream,
    *,
    redis_url: str | None = None,
    reasoning: str = "direct",
    **sticky: Any,
) -> AsyncIterator[InProcessGateway]:
    config = stickiness_config(f"sqlite:///{tmp_path / 'gw.db'}", upstream, reasoning, **sticky)
    config["store"]["redis_url"] = redis_url
    async with in_process_gateway(config) as gw:
        yield gw


def state(gw: InProcessGateway) -> Gateway:
    gateway: Gateway = gw.app.state.gateway
    return gateway


async def ask(gw: InProcessGateway, messages: list[dict[str, Any]], key: str | None = None) -> Any:
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=key or gw.key, http_client=gw.client
    )
    # temperature 1: not cached, so every turn is routed.
    return await client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, temperature=1
    )


@pytest.fixture
async def gw(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with sticky_gateway(tmp_path, upstream) as gateway:
        yield gateway


async def test_an_easy_follow_up_stays_on_the_tier_that_served_the_proof(
    gw: InProcessGateway,
) -> None:
    first = await ask(gw, TURN_1)
    assert first.headers["x-rightsize-tier"] == "reasoning"
    second = await ask(gw, TURN_2)
    assert second.parse().choices[0].message.content == ANSWER
    assert (second.headers["x-rightsize-tier"], second.headers["x-rightsize-model"]) == (
        "reasoning",
        "direct",
    )
    assert float(second.headers["x-rightsize-demand"]) < 0.7  # the follow-up alone is easy
    row = await gw.admin.spend(second.headers["x-request-id"])
    assert "sticky: conversation served by 'reasoning' at 20" in row["route_reason"]
    assert "tier 'reasoning', not 'light'" in row["route_reason"]


async def test_a_streamed_turn_is_remembered_too(gw: InProcessGateway) -> None:
    client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client)
    stream = await client.chat.completions.create(
        model="auto", messages=TURN_1, temperature=1, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == ANSWER
    assert (await ask(gw, TURN_2)).headers["x-rightsize-tier"] == "reasoning"


async def test_a_turn_that_failed_upstream_is_not_remembered(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    async with sticky_gateway(tmp_path, upstream, reasoning="direct-500") as gw:
        with pytest.raises(openai.InternalServerError):
            await ask(gw, TURN_1)
        assert (await ask(gw, TURN_2)).headers["x-rightsize-tier"] == "light"


async def test_a_turn_served_by_the_lowest_tier_writes_nothing(gw: InProcessGateway) -> None:
    writes: list[str] = []
    sticky = state(gw).stickiness
    remember = sticky.remember

    async def spy(talk: Any, tier: str) -> None:
        writes.append(tier)
        await remember(talk, tier)

    sticky.remember = spy  # type: ignore[method-assign]
    assert (await ask(gw, FRESH)).headers["x-rightsize-tier"] == "light"
    assert (await ask(gw, TURN_1)).headers["x-rightsize-tier"] == "reasoning"
    assert writes == ["reasoning"]


async def test_the_same_follow_up_in_a_fresh_conversation_goes_light(
    gw: InProcessGateway,
) -> None:
    await ask(gw, TURN_1)
    fresh = await ask(gw, FRESH)
    assert fresh.headers["x-rightsize-tier"] == "light"
    row = await gw.admin.spend(fresh.headers["x-request-id"])
    assert "sticky" not in row["route_reason"]


async def test_after_the_ttl_the_follow_up_goes_light(gw: InProcessGateway) -> None:
    clock = Clock()
    gateway = state(gw)
    settings = gateway.settings.routing.stickiness
    gateway.stickiness = Stickiness.build(settings, None, gateway.policy.tiers, clock=clock)
    await ask(gw, TURN_1)
    clock.now += settings.ttl_s - 1
    assert (await ask(gw, TURN_2)).headers["x-rightsize-tier"] == "reasoning"
    # That turn was served by 'reasoning' too: the TTL runs from it.
    clock.now += settings.ttl_s + 1
    assert (await ask(gw, TURN_2)).headers["x-rightsize-tier"] == "light"


async def test_another_key_continuing_the_same_chat_does_not_share_its_tier(
    gw: InProcessGateway,
) -> None:
    await ask(gw, TURN_1)
    other = await gw.admin.key("search")
    assert (await ask(gw, TURN_2, key=other["key"])).headers["x-rightsize-tier"] == "light"


async def ask_tier(gw: InProcessGateway, key: dict[str, Any], tier: str) -> str:
    """Continue TURN_2 with `key` asking for `tier` by name, the conversation having been
    served by 'reasoning' before; the tier that serves it."""
    talk = conversation_of(key["id"], TURN_2)
    assert talk is not None and talk.continuing
    await state(gw).stickiness.remember(talk, "reasoning")
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=key["key"], http_client=gw.client
    )
    response = await client.chat.completions.with_raw_response.create(
        model=tier, messages=TURN_2, temperature=1
    )
    return str(response.headers["x-rightsize-tier"])


async def test_a_tier_asked_for_by_name_is_served_as_asked_not_lifted(
    gw: InProcessGateway,
) -> None:
    assert await ask_tier(gw, await gw.admin.key("search"), "light") == "light"
    assert await ask_tier(gw, await gw.admin.key("search"), "auto") == "reasoning"


async def test_a_key_that_may_not_use_the_remembered_tier_is_not_lifted_to_it(
    gw: InProcessGateway,
) -> None:
    light_only = await gw.admin.key("search", allowed_models=["light"])
    assert await ask_tier(gw, light_only, "light") == "light"


async def test_a_pinned_model_is_not_lifted(gw: InProcessGateway) -> None:
    await ask(gw, TURN_1)
    client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client)
    response = await client.chat.completions.with_raw_response.create(
        model="small", messages=TURN_2, temperature=1
    )
    assert response.headers["x-rightsize-model"] == "small"


async def test_with_stickiness_disabled_the_follow_up_goes_light(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    async with sticky_gateway(tmp_path, upstream, enabled=False) as gw:
        assert (await ask(gw, TURN_1)).headers["x-rightsize-tier"] == "reasoning"
        assert (await ask(gw, TURN_2)).headers["x-rightsize-tier"] == "light"


async def test_replicas_on_one_redis_share_the_conversations_tier(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    url = shared_redis()
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:sticky:"
    config = stickiness_config(
        f"sqlite:///{tmp_path / 'shared.db'}", upstream, key_prefix=prefix, redis_timeout_ms=500
    )
    config["store"]["redis_url"] = url
    try:
        async with in_process_gateway(config) as first, replica(config) as second:
            assert state(first).stickiness.store.name == "redis"
            assert (await ask(first, TURN_1)).headers["x-rightsize-tier"] == "reasoning"
            # The same key on the other replica (one store): it finds the conversation's tier.
            second.key, second.auth = first.key, first.auth
            response = await ask(second, TURN_2)
            assert response.headers["x-rightsize-tier"] == "reasoning"
            row = await first.admin.spend(response.headers["x-request-id"])
            assert "sticky: conversation served by 'reasoning'" in row["route_reason"]
    finally:
        delete_prefix(url, prefix)


@asynccontextmanager
async def replica(config: dict[str, Any]) -> AsyncIterator[InProcessGateway]:
    """A second app on the same store and Redis (its own team, so that setting up succeeds)."""
    second = {**config, "store": {**config["store"], "migrate_on_start": False}}
    app = create_app(Settings.model_validate(second), environ=gateway_env())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield InProcessGateway(client, Admin(client), "", app)


async def test_the_memory_store_forgets_a_tier_after_its_ttl_and_keeps_the_highest() -> None:
    clock = Clock()
    store = MemoryStickiness(ttl_s=60, max_conversations=10, clock=clock)
    sticky = Stickiness(StickinessSettings(ttl_s=60), store, TIERS, clock=clock)
    talk = Conversation("c1", continuing=True)
    await sticky.remember(talk, "reasoning")
    clock.now += 30
    await sticky.remember(talk, "light")  # a capped turn: the higher tier still holds
    served = await sticky.highest(talk)
    assert served is not None and (served.tier, served.at) == ("reasoning", clock.now - 30)
    clock.now += 31
    served = await sticky.highest(talk)
    assert served is not None and served.tier == "light"
    clock.now += 30
    assert await sticky.highest(talk) is None
    assert len(store) == 0


async def test_the_memory_store_is_bounded_dropping_the_least_recently_served() -> None:
    clock = Clock()
    store = MemoryStickiness(ttl_s=60, max_conversations=2, clock=clock)
    for name in ("a", "b", "c"):
        await store.remember(name, "light", clock.now)
    assert len(store) == 2
    assert await store.served("a", TIERS) == {}
    assert await store.served("c", TIERS) == {"light": clock.now}


async def test_the_redis_store_expires_a_tier_after_its_ttl() -> None:
    url = shared_redis()
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:sticky:"
    store = RedisStickiness(url, prefix, ttl_s=0.3, timeout_s=0.5)
    try:
        await store.remember("c1", "reasoning", 1.5)
        assert await store.served("c1", TIERS) == {"reasoning": 1.5}
        await asyncio.sleep(0.4)
        assert await store.served("c1", TIERS) == {}
    finally:
        await store.aclose()
        delete_prefix(url, prefix)


async def test_redis_down_routes_without_stickiness_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = RedisStickiness("redis://127.0.0.1:1/0", "p:", ttl_s=60, timeout_s=0.2)
    sticky = Stickiness(StickinessSettings(), dead, TIERS)
    talk = Conversation("c1", continuing=True)
    with caplog.at_level(logging.WARNING, logger="rightsize.stickiness"):
        await sticky.remember(talk, "reasoning")
        assert await sticky.highest(talk) is None
    assert "requests are routed without it" in caplog.text
    await sticky.aclose()


def test_a_conversation_is_known_by_its_key_system_message_and_first_user_turn() -> None:
    first = conversation_of("key_1", TURN_1)
    later = conversation_of("key_1", TURN_2)
    assert first is not None and later is not None
    assert (first.id, first.continuing, later.continuing) == (later.id, False, True)
    other_key = conversation_of("key_2", TURN_2)
    other_system = conversation_of(
        "key_1", [{"role": "system", "content": "Be brief."}, *TURN_2[1:]]
    )
    assert other_key is not None and other_key.id != first.id
    assert other_system is not None and other_system.id != first.id
    two_user_turns = [*TURN_1, {"role": "user", "content": FOLLOW_UP}]
    assert conversation_of("key_1", two_user_turns) == later
    assert conversation_of("key_1", [SYSTEM]) is None


def test_stickiness_settings_take_environment_overrides() -> None:
    env = {"RIGHTSIZE_ROUTING__STICKINESS__ENABLED": "false",
           "RIGHTSIZE_ROUTING__STICKINESS__TTL_S": "120"}  # fmt: skip
    settings, _ = load_settings(None, environ=env)
    assert (settings.routing.stickiness.enabled, settings.routing.stickiness.ttl_s) == (False, 120)
