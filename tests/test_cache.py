"""The prompt cache through the gateway: the same specifications on both cache stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.cache.config import DEFAULT_SEMANTIC_THRESHOLD
from tests.cache_support import (
    STORES,
    ask,
    cached_gateway,
    prompt_cache,
    upstream_calls,
)
from tests.conftest import PRICE_DIRECT, InProcessGateway
from tests.fake_upstream import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream


@pytest.fixture(params=STORES)
async def gw(
    request: pytest.FixtureRequest, upstream: RunningUpstream, tmp_path: Path
) -> AsyncIterator[InProcessGateway]:
    async with cached_gateway(request.param, upstream, tmp_path) as running:
        yield running


def answer_of(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


# Hit and miss


async def test_first_request_is_a_miss_answered_upstream(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    before = upstream_calls(upstream)
    response = await ask(gw)
    assert response.status_code == 200
    assert response.headers["x-rightsize-cache"] == "miss"
    assert upstream_calls(upstream) == before + 1


async def test_repeated_deterministic_request_is_a_hit_without_upstream_call(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    first = await ask(gw)
    before = upstream_calls(upstream)
    second = await ask(gw)
    assert second.status_code == 200, second.text
    assert second.headers["x-rightsize-cache"] == "hit"
    assert second.headers["x-rightsize-cost-usd"] == "0"
    assert upstream_calls(upstream) == before
    assert answer_of(second.json()) == answer_of(first.json()) == ANSWER
    assert second.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS


async def test_request_that_is_not_deterministic_is_not_cached(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await ask(gw, temperature=0.7)
    before = upstream_calls(upstream)
    again = await ask(gw, temperature=0.7)
    assert again.headers["x-rightsize-cache"] == "miss"
    assert upstream_calls(upstream) == before + 1


async def test_request_without_temperature_is_not_cached(gw: InProcessGateway) -> None:
    await ask(gw, temperature=None)
    assert (await ask(gw, temperature=None)).headers["x-rightsize-cache"] == "miss"


@pytest.mark.parametrize(
    "fields",
    [{"logprobs": True}, {"web_search_options": {}}],
    ids=["logprobs", "web_search"],
)
async def test_requests_whose_answer_cannot_be_replayed_are_not_cached(
    gw: InProcessGateway, fields: dict[str, Any]
) -> None:
    await ask(gw, **fields)
    assert (await ask(gw, **fields)).headers["x-rightsize-cache"] == "miss"


@pytest.mark.parametrize("kind", STORES)
async def test_team_policy_can_opt_in_to_caching_sampled_requests(
    kind: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    teams = {"search": {"sampled": True}}
    async with cached_gateway(kind, upstream, tmp_path, teams=teams) as gw:
        await ask(gw, temperature=0.7)
        assert (await ask(gw, temperature=0.7)).headers["x-rightsize-cache"] == "hit"


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 5},
        {"seed": 7},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "lookup"}}]},
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"model": "direct-cached"},
    ],
    ids=["max_tokens", "seed", "response_format", "tools", "messages", "deployment"],
)
async def test_anything_that_changes_the_answer_changes_the_key(
    gw: InProcessGateway, change: dict[str, Any]
) -> None:
    await ask(gw)
    assert (await ask(gw, **change)).headers["x-rightsize-cache"] == "miss"


async def test_delivery_fields_do_not_change_the_key(gw: InProcessGateway) -> None:
    await ask(gw)
    again = await ask(gw, user="someone-else", metadata={"job": "nightly"}, store=False)
    assert again.headers["x-rightsize-cache"] == "hit"


async def test_numerically_equal_parameters_share_the_key(gw: InProcessGateway) -> None:
    await ask(gw, temperature=0, max_tokens=50)
    again = await ask(gw, temperature=0.0, max_tokens=50.0)
    assert again.headers["x-rightsize-cache"] == "hit"


async def test_upstream_error_is_not_cached(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    assert (await ask(gw, model="direct-500")).status_code == 502
    before = upstream_calls(upstream)
    assert (await ask(gw, model="direct-500")).status_code == 502
    assert upstream_calls(upstream) == before + 1


async def test_hit_still_requires_the_key_to_be_allowed_the_model(gw: InProcessGateway) -> None:
    await ask(gw)
    restricted = await gw.admin.key("search", allowed_models=["small"])
    response = await ask(gw, key=restricted["key"])
    assert response.status_code == 403


# TTL


@pytest.mark.parametrize("kind", STORES)
async def test_entry_expires_after_its_ttl(
    kind: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    async with cached_gateway(kind, upstream, tmp_path, ttl_s=0.3) as gw:
        await ask(gw)
        await asyncio.sleep(0.5)
        assert (await ask(gw)).headers["x-rightsize-cache"] == "miss"


# Opt-out headers


async def test_no_cache_header_skips_the_lookup(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await ask(gw)
    before = upstream_calls(upstream)
    response = await ask(gw, headers={"cache-control": "no-cache"})
    assert response.headers["x-rightsize-cache"] == "miss"
    assert upstream_calls(upstream) == before + 1


async def test_no_cache_header_still_stores_the_fresh_answer(gw: InProcessGateway) -> None:
    await ask(gw, headers={"cache-control": "no-cache"})
    assert (await ask(gw)).headers["x-rightsize-cache"] == "hit"


async def test_no_store_header_skips_the_lookup(gw: InProcessGateway) -> None:
    await ask(gw)
    response = await ask(gw, headers={"Cache-Control": "max-age=0, No-Store"})
    assert response.headers["x-rightsize-cache"] == "miss"


async def test_no_store_header_does_not_store_the_answer(gw: InProcessGateway) -> None:
    await ask(gw, headers={"cache-control": "no-store"})
    assert (await ask(gw)).headers["x-rightsize-cache"] == "miss"


# Invalidation and team scope


async def test_admin_invalidation_drops_the_teams_entries(gw: InProcessGateway) -> None:
    await ask(gw)
    await ask(gw, max_tokens=9)
    response = await gw.client.delete("/admin/cache/teams/search", headers=gw.admin.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"team": "search", "deleted": 2}
    assert (await ask(gw)).headers["x-rightsize-cache"] == "miss"


async def test_admin_invalidation_keeps_other_teams_entries(gw: InProcessGateway) -> None:
    await gw.admin.team("ads")
    ads = (await gw.admin.key("ads"))["key"]
    await ask(gw, key=ads)
    await ask(gw)
    await gw.client.delete("/admin/cache/teams/search", headers=gw.admin.headers)
    assert (await ask(gw, key=ads)).headers["x-rightsize-cache"] == "hit"


async def test_admin_invalidation_needs_the_master_key(gw: InProcessGateway) -> None:
    response = await gw.client.delete("/admin/cache/teams/search", headers=gw.auth)
    assert response.status_code == 401


async def test_team_never_receives_another_teams_cached_answer(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await gw.admin.team("ads")
    ads = (await gw.admin.key("ads"))["key"]
    await ask(gw)
    before = upstream_calls(upstream)
    response = await ask(gw, key=ads)
    assert response.headers["x-rightsize-cache"] == "miss"
    assert upstream_calls(upstream) == before + 1


# Spend log


async def test_hit_is_logged_as_cached_with_cost_zero_and_the_saved_cost(
    gw: InProcessGateway,
) -> None:
    await ask(gw)
    hit = await ask(gw)
    row = await gw.admin.spend(hit.headers["x-request-id"])
    expected = (
        PROMPT_TOKENS * Decimal(PRICE_DIRECT["input_per_mtok"])
        + COMPLETION_TOKENS * Decimal(PRICE_DIRECT["output_per_mtok"])
    ) / 1_000_000
    assert row["cache_hit"] is True
    assert Decimal(row["cost_usd"]) == 0
    assert Decimal(row["saved_usd"]) == expected
    assert (row["status"], row["team"]) == (200, "search")


async def test_saved_cost_round_trips_on_both_sql_stores(
    store_url: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    async with cached_gateway("memory", upstream, tmp_path, store_url=store_url) as gw:
        await ask(gw, model="small")
        hit = await ask(gw, model="small")
        row = await gw.admin.spend(hit.headers["x-request-id"])
    assert row["cache_hit"] is True
    assert Decimal(row["saved_usd"]) == Decimal("0.00000735")  # 21 * 0.15e-6 + 7 * 0.6e-6


# Streaming


def sdk(gw: InProcessGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client)


async def stream_with_sdk(gw: InProcessGateway) -> tuple[str, list[Any]]:
    stream = await sdk(gw).chat.completions.create(
        model="direct",
        messages=QUESTION_SDK,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


QUESTION_SDK: Any = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


async def test_streamed_hit_parses_with_the_openai_sdk(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    await stream_with_sdk(gw)
    before = upstream_calls(upstream)
    text, chunks = await stream_with_sdk(gw)
    assert upstream_calls(upstream) == before
    assert text == ANSWER
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )


async def test_streamed_hit_carries_the_hit_header(gw: InProcessGateway) -> None:
    await ask(gw, stream=True)
    response = await ask(gw, stream=True)
    assert response.headers["x-rightsize-cache"] == "hit"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")


async def test_non_streamed_answer_is_replayed_as_a_stream(gw: InProcessGateway) -> None:
    await ask(gw)
    text, chunks = await stream_with_sdk(gw)
    assert text == ANSWER
    assert chunks[-1].usage is not None


async def test_streamed_answer_is_served_to_a_non_streamed_request(gw: InProcessGateway) -> None:
    await stream_with_sdk(gw)
    response = await ask(gw)
    assert response.headers["x-rightsize-cache"] == "hit"
    assert answer_of(response.json()) == ANSWER
    assert response.json()["usage"]["completion_tokens"] == COMPLETION_TOKENS


async def test_stream_broken_midway_is_not_cached(gw: InProcessGateway) -> None:
    await ask(gw, model="direct-midstream", stream=True)
    response = await ask(gw, model="direct-midstream", stream=True)
    assert response.headers["x-rightsize-cache"] == "miss"


# Corrupted entries


CORRUPTIONS = {
    "garbage": b"\x00\xffnot json",
    "truncated": b'{"v": 1, "team": "search", "key": ',
    "wrong_shape": b'{"v": 1, "team": "search", "key": "KEY", "completion": {"choices": 3}}',
    "other_version": b'{"v": 999}',
    "other_team": b'{"v": 1, "team": "ads", "key": "KEY", "deployment": "direct", '
    b'"completion": {"choices": [{"index": 0, "message": {"content": "leak"}}], '
    b'"usage": {"prompt_tokens": 1, "completion_tokens": 1}}}',
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupted_entry_is_a_miss_not_an_error(
    gw: InProcessGateway, corruption: str
) -> None:
    await ask(gw)
    cache = prompt_cache(gw)
    for key in await cache.backend.keys("search"):
        value = CORRUPTIONS[corruption].replace(b"KEY", key.encode())
        await cache.backend.set("search", key, value, 60)
    response = await ask(gw)
    assert response.status_code == 200
    assert response.headers["x-rightsize-cache"] == "miss"
    assert answer_of(response.json()) == ANSWER
    assert cache.metrics.corrupt == 1


async def test_corrupted_entry_is_replaced_by_the_fresh_answer(gw: InProcessGateway) -> None:
    await ask(gw)
    cache = prompt_cache(gw)
    for key in await cache.backend.keys("search"):
        await cache.backend.set("search", key, b"garbage", 60)
    await ask(gw)
    assert (await ask(gw)).headers["x-rightsize-cache"] == "hit"


# Semantic tier through the gateway, with the router's embedding


HASH_TABLE = (
    "{} explain how a hash table handles collisions when two keys map to the same bucket, and "
    "what the trade-offs between separate chaining and open addressing are in terms of memory "
    "use and cache locality?"
)
PARAPHRASES = {
    "casing": ("What is the capital city of France?", "what is the capital city of france ?"),
    "whitespace": (
        "What is the capital city of France?",
        "  What is the capital   city of France?\n",
    ),
    "punctuation": ("What is the capital city of France?", "What is the capital city of France"),
    "filler": (HASH_TABLE.format("Can you"), HASH_TABLE.format("Could you")),
}


@pytest.mark.parametrize("paraphrase", list(PARAPHRASES))
async def test_a_paraphrase_is_a_semantic_hit_at_the_default_with_the_routers_embedding(
    upstream: RunningUpstream, tmp_path: Path, paraphrase: str
) -> None:
    teams = {"search": {"semantic": True}}
    first, again = PARAPHRASES[paraphrase]
    async with cached_gateway("memory", upstream, tmp_path, teams=teams) as gw:
        miss = await ask(gw, messages=[{"role": "user", "content": first}])
        assert miss.headers["x-rightsize-cache"] == "miss"
        calls = upstream_calls(upstream)
        hit = await ask(gw, messages=[{"role": "user", "content": again}])
    assert hit.status_code == 200
    assert hit.headers["x-rightsize-cache"] == "hit"
    assert float(hit.headers["x-rightsize-cache-similarity"]) >= DEFAULT_SEMANTIC_THRESHOLD
    assert upstream_calls(upstream) == calls
    assert hit.json()["choices"][0]["message"]["content"] == ANSWER


async def test_a_question_that_differs_only_in_a_number_is_a_miss_with_the_routers_embedding(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    # The router's embedding scores this pair 0.997: only the guard tells them apart.
    teams = {"search": {"semantic": True, "semantic_threshold": 0.99}}
    question = "A ball is dropped from a height of {} feet. How long does it take to land?"
    async with cached_gateway("memory", upstream, tmp_path, teams=teams) as gw:
        await ask(gw, messages=[{"role": "user", "content": question.format(10)}])
        calls = upstream_calls(upstream)
        other = await ask(gw, messages=[{"role": "user", "content": question.format(12)}])
    assert other.headers["x-rightsize-cache"] == "miss"
    assert upstream_calls(upstream) == calls + 1


async def test_a_paraphrase_never_hits_another_teams_answer_with_the_routers_embedding(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    teams = {"search": {"semantic": True}, "ads": {"semantic": True}}
    first, again = PARAPHRASES["casing"]
    async with cached_gateway("memory", upstream, tmp_path, teams=teams) as gw:
        await gw.admin.team("ads")
        ads = (await gw.admin.key("ads"))["key"]
        await ask(gw, messages=[{"role": "user", "content": first}])
        other = await ask(gw, key=ads, messages=[{"role": "user", "content": again}])
        own = await ask(gw, messages=[{"role": "user", "content": again}])
    assert other.headers["x-rightsize-cache"] == "miss"
    assert own.headers["x-rightsize-cache"] == "hit"


async def test_semantic_tier_without_a_router_is_skipped_visibly(
    upstream: RunningUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    teams = {"search": {"semantic": True}}
    caplog.set_level(logging.WARNING, logger="rightsize.cache")
    async with cached_gateway(
        "memory", upstream, tmp_path, teams=teams, router_enabled=False
    ) as gw:
        await ask(gw)
        await ask(gw, max_tokens=3)
        stats = (await gw.client.get("/admin/cache", headers=gw.admin.headers)).json()
    assert stats["semantic_skipped"] == {"no_embedding": 2}
    assert sum("no embedding" in r.getMessage() for r in caplog.records) == 1


async def test_cache_stats_count_hits_and_misses(gw: InProcessGateway) -> None:
    await ask(gw)
    await ask(gw)
    await ask(gw, temperature=1)
    stats = (await gw.client.get("/admin/cache", headers=gw.admin.headers)).json()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (1, 1, 1)
    assert stats["skipped"] == {"not_deterministic": 1}


async def test_deleting_a_team_drops_its_cached_answers(gw: InProcessGateway) -> None:
    await gw.admin.team("ads")
    ads = (await gw.admin.key("ads"))["key"]
    await ask(gw, key=ads)
    await gw.client.delete("/admin/teams/ads", headers=gw.admin.headers)
    assert await prompt_cache(gw).backend.keys("ads") == []


async def test_streamed_hit_is_logged_as_a_cached_stream(gw: InProcessGateway) -> None:
    await ask(gw, stream=True)
    hit = await ask(gw, stream=True)
    row = await gw.admin.spend(hit.headers["x-request-id"])
    assert (row["cache_hit"], row["stream"], Decimal(row["cost_usd"])) == (True, True, 0)
    assert Decimal(row["saved_usd"]) > 0
