"""The router's estimate on every spend row (revision 0007), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.spend import decode, encode
from gateway.store import SpendRecord, Store
from router import Router
from router.artifact import default_artifact_dir
from router.estimate import CATEGORIES
from router.messages import prompt_from_messages
from tests.cache_support import QUESTION, ask
from tests.conftest import InProcessGateway
from tests.migrate import migrate_to, spend_columns


async def logged(gateway: InProcessGateway, request_id: str) -> dict[str, Any]:
    return await gateway.admin.spend(request_id)


async def test_a_routed_request_logs_the_estimate_its_headers_show(
    gateway: InProcessGateway,
) -> None:
    response = await ask(gateway, model="auto")
    assert response.status_code == 200, response.text
    row = await logged(gateway, response.headers["x-request-id"])

    assert f"{row['reasoning_demand']:.3f}" == response.headers["x-rightsize-demand"]
    budget = f"{row['token_budget_p50']}/{row['token_budget_p90']}"
    assert budget == response.headers["x-rightsize-token-budget"]
    assert row["category"] in CATEGORIES
    assert row["router_artifact"] == Router.load().artifact_id
    assert row["config_hash"] is not None and len(row["config_hash"]) == 16
    # The logged demand is the router's own, unrounded: eval --spend-log scores exactly it.
    expected = Router.load().estimate(prompt_from_messages(QUESTION)).reasoning_demand
    assert row["reasoning_demand"] == expected


async def test_a_streamed_request_logs_the_estimate_when_its_stream_ends(
    gateway: InProcessGateway,
) -> None:
    async with gateway.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "auto", "messages": QUESTION, "stream": True},
        headers=gateway.auth,
    ) as response:
        assert response.status_code == 200
        demand = response.headers["x-rightsize-demand"]
        async for _ in response.aiter_bytes():
            pass
    row = await logged(gateway, response.headers["x-request-id"])
    assert row["stream"] is True
    assert f"{row['reasoning_demand']:.3f}" == demand
    assert all(row[column] is not None for column in _ESTIMATE_COLUMNS)


async def test_a_cache_hit_leaves_the_estimate_columns_empty(gateway: InProcessGateway) -> None:
    first = await ask(gateway, model="auto")
    hit = await ask(gateway, model="auto")
    assert hit.headers["x-rightsize-cache"] == "hit", hit.text
    routed = await logged(gateway, first.headers["x-request-id"])
    row = await logged(gateway, hit.headers["x-request-id"])

    assert row["cache_hit"] is True
    for column in _ESTIMATE_COLUMNS:
        assert routed[column] is not None, column
        assert row[column] is None, column


async def test_a_request_refused_before_routing_has_no_estimate(
    gateway: InProcessGateway,
) -> None:
    response = await ask(gateway, model="auto", key="sk-not-a-key")
    assert response.status_code == 401
    row = await logged(gateway, response.headers["x-request-id"])
    assert all(row[column] is None for column in _ESTIMATE_COLUMNS)


async def test_the_estimate_columns_round_trip_through_the_store(store_url: str) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    try:
        record = _estimated_record()
        bare = SpendRecord(request_id="req_bare", created_at=record.created_at, status=200)
        await store.insert_spend([record, bare])
        (back,) = await store.spend(request_id="req_estimated")
        (empty,) = await store.spend(request_id="req_bare")
    finally:
        await store.aclose()
    assert back == record
    assert all(getattr(empty, c) is None for c in _ESTIMATE_COLUMNS)


def test_the_journal_line_carries_the_estimate() -> None:
    record = _estimated_record()
    assert decode(encode(record)) == record


def test_an_oversized_category_is_cut_to_its_column() -> None:
    record = _estimated_record(category="c" * 100, reasoning_demand=float("nan"))
    assert decode(encode(record)).category == "c" * 32
    assert decode(encode(record)).reasoning_demand is None


def test_the_artifact_id_changes_with_the_artifact_files(tmp_path: Any) -> None:
    import shutil

    from router.artifact import artifact_id

    copy = tmp_path / "artifact"
    shutil.copytree(default_artifact_dir(), copy)
    assert artifact_id(copy) == artifact_id(default_artifact_dir())
    (copy / "tier_thresholds.json").write_text("{}\n")
    assert artifact_id(copy) != artifact_id(default_artifact_dir())


@pytest.mark.parametrize(
    "change",
    ["threshold", "price", "runtime", "stickiness", "engine", "spill", "objective", "latency"],
)
def test_the_config_hash_changes_with_the_routing_configuration(change: str) -> None:
    from gateway.fingerprint import config_hash
    from gateway.llm import model_info
    from gateway.settings import Settings, build_catalog
    from policies import PolicyEngine

    def hashed(config: dict[str, Any]) -> str:
        settings = Settings.model_validate(config)
        catalog = build_catalog(settings, model_info, "test")
        default = settings.default_route(catalog)
        policy = PolicyEngine(catalog, settings.policy, default)
        engines = any(d.engine for d in catalog.deployments)
        return config_hash(
            catalog,
            policy.spec,
            default,
            settings.router,
            settings.routing.stickiness,
            settings.local_backend if engines else None,
        )

    models = [
        {"name": "small", "model": "openai/gpt-4o-mini", "tier": "light"},
        {"name": "big", "model": "openai/gpt-4o", "tier": "standard"},
    ]
    tiers = [
        {"name": "light", "deployments": ["small"]},
        {"name": "standard", "deployments": ["big"], "min_demand": 0.4},
    ]
    base: dict[str, Any] = {"models": models, "policy": {"tiers": tiers}}
    changed: dict[str, Any] = {"models": [dict(m) for m in models], "policy": {"tiers": tiers}}
    if change == "threshold":
        changed["policy"] = {"tiers": [tiers[0], {**tiers[1], "min_demand": 0.5}]}
    elif change == "price":
        changed["models"][0]["price"] = {"input_per_mtok": "1", "output_per_mtok": "2"}
    elif change == "runtime":
        changed["router"] = {"runtime": "onnx"}
    elif change == "engine":
        changed["models"][0].update(engine="vllm", api_base="http://gpu:8000/v1")
    elif change == "objective":
        changed["policy"] = {"tiers": [tiers[0], {**tiers[1], "latency": {"ttft_p95_ms": 800}}]}
    elif change == "latency":
        changed["policy"] = {"tiers": tiers, "latency_class": "batch"}
    elif change == "spill":
        engine = {"engine": "vllm", "api_base": "http://gpu:8000/v1"}
        base["models"] = [{**models[0], **engine}, models[1]]
        changed["models"] = base["models"]
        changed["local_backend"] = {"spill": {"queue_high": 16}}
    else:
        changed["routing"] = {"stickiness": {"ttl_s": 60}}
    assert hashed(base) == hashed({**base})
    assert hashed(changed) != hashed(base)


def test_a_configuration_without_local_engines_keeps_the_hash_it_had_before_them() -> None:
    """Deployment fields at their default are left out of the hash: 070a7291220e29ee is what
    this configuration hashed to before `engine` and `replicas` existed."""
    from gateway.fingerprint import config_hash
    from gateway.llm import model_info
    from gateway.settings import Settings, build_catalog
    from policies import PolicyEngine

    settings = Settings.model_validate(
        {
            "models": [
                {"name": "small", "model": "openai/gpt-4o-mini", "tier": "light"},
                {"name": "big", "model": "openai/gpt-4o", "tier": "standard"},
            ],
            "policy": {
                "tiers": [
                    {"name": "light", "deployments": ["small"]},
                    {"name": "standard", "deployments": ["big"], "min_demand": 0.4},
                ]
            },
        }
    )
    catalog = build_catalog(settings, model_info, "test")
    default = settings.default_route(catalog)
    policy = PolicyEngine(catalog, settings.policy, default)
    digest = config_hash(
        catalog, policy.spec, default, settings.router, settings.routing.stickiness
    )
    assert digest == "070a7291220e29ee"


_ESTIMATE_COLUMNS = (
    "reasoning_demand",
    "token_budget_p50",
    "token_budget_p90",
    "category",
    "router_artifact",
    "config_hash",
)


def _estimated_record(**changes: Any) -> SpendRecord:
    fields: dict[str, Any] = {
        "request_id": "req_estimated",
        "created_at": datetime(2026, 12, 3, 10, 30, tzinfo=UTC),
        "status": 200,
        "team": "search",
        "deployment": "small",
        "cost_usd": Decimal("0.000012"),
        "reasoning_demand": 0.12345678901234,
        "token_budget_p50": 180,
        "token_budget_p90": 420,
        "category": "math",
        "router_artifact": "5e2c602681c1fb62",
        "config_hash": "0123456789abcdef",
    }
    fields.update(changes)
    return SpendRecord(**fields)


async def test_revision_0007_adds_empty_estimate_columns_to_existing_rows_and_goes_back(
    store_url: str,
) -> None:
    from sqlalchemy import text

    store = Store.connect(store_url)
    try:
        async with store.engine.begin() as conn:
            # A fresh SQLite file is empty, a session's PostgreSQL database already at head.
            await conn.run_sync(migrate_to("0006"))
            await conn.run_sync(migrate_to("0006", down=True))
            assert not set(_ESTIMATE_COLUMNS) & await conn.run_sync(spend_columns)
            await conn.execute(
                text(
                    "INSERT INTO spend_log (request_id, created_at, status, prompt_tokens, "
                    "completion_tokens, cached_tokens, usage_estimated, cost_picousd, stream, "
                    "cache_hit, saved_picousd, attempts, record_id) VALUES ('req_old', "
                    ":at, 200, 1, 2, 0, false, 5, false, false, 0, 1, 'old')"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
        await store.migrate()
        (old,) = await store.spend(request_id="req_old")
        assert all(getattr(old, c) is None for c in _ESTIMATE_COLUMNS)
        async with store.engine.begin() as conn:
            await conn.run_sync(migrate_to("0006", down=True))
            assert not set(_ESTIMATE_COLUMNS) & await conn.run_sync(spend_columns)
            await conn.run_sync(migrate_to("head"))
            assert set(_ESTIMATE_COLUMNS) <= await conn.run_sync(spend_columns)
    finally:
        await store.aclose()
