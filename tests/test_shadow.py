"""Shadow evaluation (issue 21): the sampler, the cap, the judge and the rows, end to end."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.shadow import ShadowJob, ShadowRunner, combine, parse_verdict
from gateway.store import OutcomeRecord, SpendRecord, Store
from ledger.budgets import Budget
from ledger.periods import Period
from policies import PolicyError, PolicySpec, ShadowPolicy, ShadowSpec, validate_policy
from tests.conftest import (
    MASTER_KEY,
    PRICE_DIRECT,
    PRICE_SMALL,
    LiveServer,
    gateway_config,
    in_process_gateway,
    live_server,
)
from tests.fake_upstream import ANSWER, COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream

# Long enough that the gateway's own count of it is past the fake's PROMPT_TOKENS: the hold
# of the shadow call is then a true bound of what it costs.
PROMPT = (
    "Explain in plain words why the sky looks blue during the day and red at sunset, and say "
    "what part the thickness of the atmosphere plays in each of the two cases, briefly please."
)
MESSAGES = [{"role": "user", "content": PROMPT}]
TEAMS = ("search", "lifted", "garbage", "broken", "plain")


def cost(price: dict[str, str], calls: int = 1) -> Decimal:
    one = (
        PROMPT_TOKENS * Decimal(price["input_per_mtok"])
        + COMPLETION_TOKENS * Decimal(price["output_per_mtok"])
    ) / 1_000_000
    return one * calls


def shadow_config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    """Tiers light (fake-ok) and strong (fake-long, a longer answer); judges of each kind."""
    config = gateway_config(store_url, upstream)
    base = upstream.base_url

    def model(name: str, upstream_id: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": f"openai/{upstream_id}",
            "api_base": base,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "price": PRICE_DIRECT,
        }

    config["models"] += [
        model("strongm", "fake-long"),
        model("judge", "fake-judge"),
        model("judge-a", "fake-judge-a"),
        model("judge-garbage", "fake-garbage"),
    ]
    config["router"] = {"enabled": False}  # auto -> the default tier: light (lifted: strong)
    judged = {"enabled": True, "sample_rate": 1.0, "judge": "judge"}
    config["policy"] = {
        "tiers": [
            {"name": "light", "deployments": ["small"]},
            {"name": "strong", "deployments": ["strongm"], "min_demand": 0.5},
        ],
        "default_tier": "light",
        "teams": {"lifted": {"default_tier": "strong"}},
        "shadow": {
            "default": {"daily_usd_cap": "1", "max_output_tokens": 64, "judge_max_tokens": 64},
            "teams": {
                "search": {**judged, "budget": "search-shadow", "keep_prompt_text": True},
                "lifted": {**judged, "budget": "lifted-shadow", "judge": "judge-a"},
                "garbage": {**judged, "budget": "garbage-shadow", "judge": "judge-garbage"},
                "broken": {**judged, "budget": "broken-shadow", "judge": "direct-500"},
            },
        },
    }
    return config


@pytest.fixture(scope="module")
def server(
    module_store_url: str, upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    config = shadow_config(module_store_url, upstream)
    with live_server(config, tmp_path_factory.mktemp("shadow")) as live:
        yield live


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> dict[str, str]:
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    found = {}
    with httpx.Client(base_url=server.base_url, headers=admin) as client:
        for team in TEAMS:
            assert client.post("/admin/teams", json={"name": team}).status_code == 201
            response = client.post("/admin/keys", json={"team": team})
            assert response.status_code == 201, response.text
            found[team] = str(response.json()["key"])
    return found


def sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


async def outcome_of(store_url: str, request_id: str, timeout_s: float = 30) -> OutcomeRecord:
    store = Store.connect(store_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [o for o in await store.outcomes() if o.request_id == request_id]
            if rows or time.monotonic() > deadline:
                assert len(rows) == 1, f"outcome rows for {request_id}: {rows}"
                return rows[0]
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


async def spend_of(store_url: str, team: str, request_id: str, count: int) -> list[SpendRecord]:
    store = Store.connect(store_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = [
                r for r in await store.spend(team=team, limit=10_000) if r.request_id == request_id
            ]
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


# The judge's answer and the position swap


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("A is more detailed. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Equally good: [[C]]", "C"),
        ("[[A]] ... on reflection [[A]]", "A"),
        ("[[A]] or maybe [[B]]", None),
        ("A is better", None),
        ("", None),
    ],
)
def test_judge_verdict_is_read_only_when_it_names_one_label(text: str, label: str | None) -> None:
    assert parse_verdict(text) == label


def test_a_preference_needs_both_orders_to_agree_else_tie() -> None:
    assert combine("strong", "strong") == "strong"
    assert combine("light", "light") == "light"
    assert combine("light", "strong") == "tie"  # a judge that always says A
    assert combine("tie", "strong") == "tie"


# Configuration


def validate(shadow: dict[str, Any]) -> None:
    spec = PolicySpec.model_validate(
        {
            "tiers": [
                {"name": "light", "deployments": ["small"]},
                {"name": "strong", "deployments": ["big"], "min_demand": 0.5},
            ],
            "shadow": shadow,
        }
    )
    validate_policy(spec, {"small", "big", "judge"}, [])


@pytest.mark.parametrize(
    ("shadow", "field", "words"),
    [
        (
            {"default": {"enabled": True, "judge": "judge"}},
            "policy.shadow.default.budget",
            "budget",
        ),
        ({"default": {"enabled": True, "budget": "b"}}, "policy.shadow.default.judge", "judge"),
        (
            {"teams": {"search": {"enabled": True, "budget": "b", "judge": "nope"}}},
            "policy.shadow.teams.search.judge",
            "unknown deployment 'nope'",
        ),
        (
            {"default": {"enabled": True, "budget": "b", "judge": "judge", "strong": "huge"}},
            "policy.shadow.default.strong",
            "unknown tier 'huge'",
        ),
        (
            {"default": {"enabled": True, "budget": "b", "judge": "judge", "strong": "light"}},
            "policy.shadow.default.strong",
            "must differ",
        ),
    ],
)
def test_invalid_shadow_settings_name_the_field(
    shadow: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        validate(shadow)
    assert raised.value.field == field
    assert words in str(raised.value)


def test_out_of_range_rate_and_cap_are_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        ShadowSpec.model_validate({"sample_rate": 1.5})
    with pytest.raises(ValueError, match="daily_usd_cap"):
        ShadowSpec.model_validate({"daily_usd_cap": "0"})


def test_a_team_entry_overrides_only_the_fields_it_sets() -> None:
    policy = ShadowPolicy.model_validate(
        {
            "default": {"enabled": True, "sample_rate": 0.1, "budget": "all", "judge": "judge"},
            "teams": {"search": {"sample_rate": 0.5}, "ads": {"enabled": False}},
        }
    )
    assert policy.for_team("search").sample_rate == 0.5
    assert policy.for_team("search").budget == "all" and policy.for_team("search").enabled
    assert not policy.for_team("ads").enabled
    assert policy.for_team("other").sample_rate == 0.1


# The sampler and the cap (properties)


@given(rate=st.floats(0.02, 0.98), seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_the_share_sampled_stays_within_binomial_bounds_of_the_rate(rate: float, seed: int) -> None:
    spec = {"enabled": True, "sample_rate": rate, "budget": "b", "judge": "judge"}
    runner = ShadowRunner(ShadowPolicy.model_validate({"default": spec, "seed": seed}))
    n = 2000
    drawn = sum(runner.sample("search", "light", ("light", "strong")) is not None for _ in range(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(drawn - n * rate) <= 5 * sigma + 1
    # A request served by a tier outside the compared pair is never drawn.
    assert runner.sample("search", "standard", ("light", "strong")) is None
    assert runner.counts.sampled == drawn


def served_job(spec: ShadowSpec, request_id: str) -> ShadowJob:
    """A request of team search that the light tier (`small`) answered, to shadow."""
    return ShadowJob(
        request_id=request_id,
        team="search",
        spec=spec,
        messages=MESSAGES,
        payload={"model": "auto", "messages": MESSAGES},
        prompt_text=PROMPT,
        served_tier="light",
        served_deployment="small",
        served_text=ANSWER,
        served_completion_tokens=COMPLETION_TOKENS,
    )


async def test_a_full_queue_drops_the_job_and_counts_it_without_waiting() -> None:
    from gateway.metrics import Metrics
    from tests.test_metrics import parse, total

    metrics = Metrics()
    spec = ShadowSpec(enabled=True, sample_rate=1.0, budget="b", judge="judge")
    runner = ShadowRunner(ShadowPolicy(default=spec, queue_size=2), observer=metrics)
    job = served_job(spec, "r")
    # No worker runs: the queue fills, and offer() returns at once either way.
    assert [runner.offer(job) for _ in range(5)] == [True, True, False, False, False]
    assert runner.counts.dropped == 3
    samples = parse(metrics.exposition().decode())
    assert total(samples, "rightsize_shadow_jobs_total", team="search", result="dropped") == 3


def test_shadow_spend_never_passes_the_daily_cap_under_concurrency(
    store_url: str, upstream: RunningUpstream
) -> None:
    """Many sampled requests at once against one named budget: the shadow and judge calls that
    run are all held first, so what the ledger and the spend log charge stays within the cap."""
    with asyncio.Runner() as loop:
        context = in_process_gateway(shadow_config(store_url, upstream))
        gw = loop.run(context.__aenter__())
        try:
            state = gw.app.state.gateway

            @given(
                cap_micro=st.integers(50, 2000),  # 0.00005 .. 0.002 USD
                jobs=st.integers(1, 24),
            )
            @settings(max_examples=12, deadline=None)
            def check(cap_micro: int, jobs: int) -> None:
                loop.run(_cap_holds(state, store_url, Decimal(cap_micro) / 1_000_000, jobs))

            check()
        finally:
            loop.run(context.__aexit__(None, None, None))


async def _cap_holds(state: Any, store_url: str, cap: Decimal, jobs: int) -> None:
    budget = f"cap-{uuid.uuid4().hex[:12]}"
    spec = ShadowSpec(
        enabled=True,
        sample_rate=1.0,
        daily_usd_cap=cap,
        budget=budget,
        judge="judge",
        max_output_tokens=16,
        judge_max_tokens=16,
    )
    runner = ShadowRunner(ShadowPolicy(default=spec))
    runner.start(state)
    try:
        job = served_job(spec, "")
        results = await asyncio.gather(
            *(runner.evaluate(_replace(job, f"cap-{i}")) for i in range(jobs))
        )
    finally:
        await runner.aclose()
    written = [r for r in results if r is not None]
    charged = sum((r.shadow_cost_usd + r.judge_cost_usd for r in written), Decimal(0))
    assert charged <= cap
    [usage] = await state.ledger.usage([Budget("team", budget, Period.DAILY, limit_usd=cap)])
    assert Decimal(usage.spent.picousd) / 10**12 == charged <= cap
    assert usage.reserved.picousd == 0  # every hold settled
    # The cap binds: had every job run whole, it would have been passed.
    whole = cost(PRICE_DIRECT, 3)
    if whole * jobs > cap:
        assert runner.counts.capped + sum(1 for r in written if r.verdict is None) > 0
    # The spend log holds exactly what the ledger charged, under the budget's name.
    store = Store.connect(store_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await store.spend(team=budget, limit=10_000)
            if (
                sum((r.cost_usd for r in rows), Decimal(0)) == charged
                or time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()
    assert sum((r.cost_usd for r in rows), Decimal(0)) == charged
    assert all(r.route_reason and r.route_reason.split(":")[0] in ("shadow", "judge") for r in rows)


def _replace(job: ShadowJob, request_id: str) -> ShadowJob:
    from dataclasses import replace

    return replace(job, request_id=request_id)


# End to end: a live gateway, the openai SDK, the fake upstream serving both tiers and judges


async def test_a_sampled_request_writes_a_judged_row_and_exact_shadow_spend(
    server: LiveServer, keys: dict[str, str], module_store_url: str
) -> None:
    raw = sdk(server, keys["search"]).chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES
    )
    request_id = raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == ANSWER
    row = await outcome_of(module_store_url, request_id)
    assert (row.served, row.light_tier, row.strong_tier) == ("light", "light", "strong")
    assert (row.light_deployment, row.strong_deployment) == ("small", "strongm")
    # The fake judge prefers the longer answer (strong's) in both orders.
    assert row.verdict == "strong" and row.error is None
    assert row.light_completion_tokens == row.strong_completion_tokens == COMPLETION_TOKENS
    assert row.prompt_hash == hashlib.sha256(PROMPT.encode()).hexdigest()
    assert row.prompt_text == PROMPT  # search keeps prompt text
    assert row.shadow_cost_usd == cost(PRICE_DIRECT)
    assert row.judge_cost_usd == cost(PRICE_DIRECT, 2)
    assert row.team == "search" and row.judge_deployment == "judge"
    shadow = await spend_of(module_store_url, "search-shadow", request_id, 3)
    reasons = sorted(r.route_reason.split(":")[0] for r in shadow if r.route_reason)
    assert reasons == ["judge", "judge", "shadow"]
    assert sum((r.cost_usd for r in shadow), Decimal(0)) == row.shadow_cost_usd + row.judge_cost_usd
    # The client's own row is its own: one, under its team, at the light tier's price.
    client = await spend_of(module_store_url, "search", request_id, 1)
    assert [(r.tier, r.cost_usd) for r in client] == [("light", cost(PRICE_SMALL))]


async def test_a_streamed_request_is_shadowed_once_its_stream_ends(
    server: LiveServer, keys: dict[str, str], module_store_url: str
) -> None:
    with sdk(server, keys["search"]).chat.completions.with_streaming_response.create(
        model="auto", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == ANSWER
    row = await outcome_of(module_store_url, request_id)
    assert row.verdict == "strong" and row.served == "light"
    assert row.light_completion_tokens == COMPLETION_TOKENS


async def test_a_judge_with_a_position_bias_yields_a_tie(
    server: LiveServer, keys: dict[str, str], module_store_url: str
) -> None:
    raw = sdk(server, keys["lifted"]).chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES
    )
    assert raw.headers["x-rightsize-tier"] == "strong"
    row = await outcome_of(module_store_url, raw.headers["x-request-id"])
    assert row.served == "strong" and row.light_deployment == "small"
    assert row.verdict == "tie"  # "[[A]]" in both orders: light, then strong
    assert row.prompt_text is None  # not kept unless the team allows it


@pytest.mark.parametrize(("team", "error"), [("garbage", "unparseable"), ("broken", "direct-500")])
async def test_a_failing_judge_loses_no_client_response_and_leaves_a_row_with_its_error(
    server: LiveServer, keys: dict[str, str], module_store_url: str, team: str, error: str
) -> None:
    raw = sdk(server, keys[team]).chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES
    )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == ANSWER
    row = await outcome_of(module_store_url, raw.headers["x-request-id"])
    assert row.verdict is None
    assert row.error is not None and row.error.startswith("judge: ") and error in row.error
    assert row.shadow_cost_usd == cost(PRICE_DIRECT)


def test_the_client_gets_the_same_answer_and_headers_with_shadowing_on_and_off(
    server: LiveServer, keys: dict[str, str]
) -> None:
    def ask(team: str) -> tuple[dict[str, str], dict[str, Any]]:
        raw = sdk(server, keys[team]).chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES
        )
        varying = {"x-request-id", "x-rightsize-overhead-ms", "date", "content-length"}
        headers = {k: v for k, v in raw.headers.items() if k not in varying}
        body = raw.parse().model_dump(exclude={"id", "created"})
        return headers, body

    on, off = ask("search"), ask("plain")
    assert on == off
