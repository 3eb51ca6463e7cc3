"""The API of each request and its prompt-cache writes on every spend row (revision 0008), on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from gateway.spend import decode, encode
from gateway.store import SpendRecord, Store
from tests.conftest import InProcessGateway
from tests.migrate import migrate_to, spend_columns


async def test_revision_0008_adds_api_and_cache_writes_to_existing_rows_and_goes_back(
    store_url: str,
) -> None:
    from sqlalchemy import text

    store = Store.connect(store_url)
    try:
        async with store.engine.begin() as conn:
            # A fresh SQLite file is empty, a session's PostgreSQL database already at head.
            await conn.run_sync(migrate_to("0007"))
            await conn.run_sync(migrate_to("0007", down=True))
            assert not {"api", "cache_creation_tokens"} & await conn.run_sync(spend_columns)
            await conn.execute(
                text(
                    "INSERT INTO spend_log (request_id, created_at, status, prompt_tokens, "
                    "completion_tokens, cached_tokens, usage_estimated, cost_picousd, stream, "
                    "cache_hit, saved_picousd, attempts, record_id) VALUES ('req_0007', "
                    ":at, 200, 1, 2, 0, false, 5, false, false, 0, 1, 'old0007')"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
        await store.migrate()
        (old,) = await store.spend(request_id="req_0007")
        # An older row does not say its API: read as the OpenAI API's, with no cache writes.
        assert (old.api, old.cache_creation_tokens) == ("openai", 0)
        async with store.engine.begin() as conn:
            assert {"api", "cache_creation_tokens"} <= await conn.run_sync(spend_columns)
            await conn.run_sync(migrate_to("0007", down=True))
            assert not {"api", "cache_creation_tokens"} & await conn.run_sync(spend_columns)
            await conn.run_sync(migrate_to("head"))
    finally:
        await store.aclose()


async def test_a_record_keeps_its_api_and_cache_writes_in_the_store_and_the_journal(
    store_url: str,
) -> None:
    record = SpendRecord(
        request_id="req_api",
        created_at=datetime(2026, 12, 2, tzinfo=UTC),
        status=200,
        api="anthropic",
        prompt_tokens=145,
        cached_tokens=100,
        cache_creation_tokens=40,
        cost_usd=Decimal("0.0003225"),
    )
    assert decode(encode(record)) == record
    store = Store.connect(store_url)
    try:
        await store.migrate()
        await store.insert_spend([record])
        (row,) = await store.spend(request_id="req_api")
    finally:
        await store.aclose()
    assert (row.api, row.cache_creation_tokens, row.cost_usd) == (
        "anthropic",
        40,
        Decimal("0.0003225"),
    )


async def test_a_chat_completion_is_logged_as_the_openai_api(gateway: InProcessGateway) -> None:
    body = {"model": "direct", "messages": [{"role": "user", "content": "api?"}]}
    response = await gateway.client.post("/v1/chat/completions", json=body, headers=gateway.auth)
    assert response.status_code == 200, response.text
    row = await gateway.admin.spend(response.headers["x-request-id"])
    assert (row["api"], row["cache_creation_tokens"]) == ("openai", 0)


async def test_a_refused_anthropic_request_is_logged_as_the_anthropic_api(
    gateway: InProcessGateway,
) -> None:
    body = {"model": "direct", "messages": [{"role": "user", "content": "no max_tokens"}]}
    response = await gateway.client.post(
        "/v1/messages", json=body, headers={"x-api-key": gateway.key}
    )
    assert response.status_code == 400
    row = await gateway.admin.spend(response.headers["x-request-id"])
    assert (row["api"], row["status"]) == ("anthropic", 400)
