"""The store on SQLite and on the real PostgreSQL: same tests, parameterized."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text

from gateway.auth import KeyService
from gateway.store import Conflict, Missing, SpendRecord, Store


async def open_store(url: str) -> Store:
    store = Store.connect(url)
    await store.migrate()
    return store


async def test_migrations_are_idempotent_and_reach_head(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.migrate()
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert version == _alembic_head()
    finally:
        await store.aclose()


def _alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import gateway

    config = Config()
    config.set_main_option("script_location", f"{gateway.__path__[0]}/migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def test_teams_are_created_listed_and_deleted(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.create_team("search")
        await store.create_team("ads")
        assert [t.name for t in await store.list_teams()] == ["ads", "search"]
        with pytest.raises(Conflict):
            await store.create_team("ads")
        await store.delete_team("ads")
        assert [t.name for t in await store.list_teams()] == ["search"]
        with pytest.raises(Missing):
            await store.delete_team("ads")
    finally:
        await store.aclose()


async def test_keys_are_stored_only_as_a_keyed_hash(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.create_team("search")
        keys = KeyService(store, b"secret-one")
        issued = await keys.issue("search", name="ci", allowed_models=["light"])
        async with store.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().all()
        stored = " ".join(str(v) for v in rows[0].values())
        assert issued.secret not in stored
        assert rows[0]["key_hash"] == keys.hash(issued.secret)
        assert KeyService(store, b"secret-two").hash(issued.secret) != rows[0]["key_hash"]
        key = await keys.authenticate(issued.secret)
        assert (key.id, key.team, key.allowed_models) == (issued.key.id, "search", ("light",))
    finally:
        await store.aclose()


async def test_a_key_hashed_with_another_secret_does_not_authenticate(store_url: str) -> None:
    from gateway.errors import AuthenticationFailed

    store = await open_store(store_url)
    try:
        await store.create_team("search")
        issued = await KeyService(store, b"secret-one").issue("search")
        with pytest.raises(AuthenticationFailed):
            await KeyService(store, b"secret-two").authenticate(issued.secret)
    finally:
        await store.aclose()


async def test_key_for_a_missing_team_is_refused(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        with pytest.raises(Missing):
            await KeyService(store, b"s").issue("nobody")
    finally:
        await store.aclose()


async def test_revoking_a_key_and_deleting_its_team(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.create_team("search")
        issued = await KeyService(store, b"s").issue("search")
        revoked = await store.revoke_key(issued.key.id)
        assert revoked.revoked_at is not None
        await store.delete_team("search")
        assert await store.list_keys() == []
        with pytest.raises(Missing):
            await store.revoke_key(issued.key.id)
    finally:
        await store.aclose()


async def test_spend_records_round_trip_with_exact_cost(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        record = SpendRecord(
            request_id="req_1",
            created_at=datetime(2026, 11, 22, 10, 30, tzinfo=UTC),
            status=200,
            team="search",
            key_id="key_1",
            requested_model="auto",
            deployment="small",
            tier="light",
            prompt_tokens=1234,
            completion_tokens=567,
            cached_tokens=100,
            cost_usd=Decimal("1234.000000037501"),  # pico-dollar resolution
            upstream_ms=12.5,
            overhead_ms=0.4,
            stream=True,
            cache_hit=True,
        )
        failure = SpendRecord(
            request_id="req_2",
            created_at=record.created_at,
            status=502,
            error_type="upstream_error",
        )
        await store.insert_spend([record, failure])
        (back,) = await store.spend(request_id="req_1")
        assert back == record
        assert [r.request_id for r in await store.spend()] == ["req_2", "req_1"]
        assert [r.request_id for r in await store.spend(team="search")] == ["req_1"]
    finally:
        await store.aclose()


def test_costs_below_a_pico_dollar_round_half_up() -> None:
    from gateway.store import from_picousd, to_picousd

    assert to_picousd(Decimal("0.0000000375005")) == 37501
    assert to_picousd(Decimal("0.0000000375004")) == 37500
    assert from_picousd(37501) == Decimal("0.000000037501")
