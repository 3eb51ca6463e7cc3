"""The batch API (issue 26): the openai SDK's batch flow against the gateway, whose upstream is a
fake provider's batch API; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.batches import BatchStore
from gateway.batches.store import BatchRecord
from gateway.store import Store
from policies import Catalog, ModelInfo, ModelSpec, TokenPrice
from tests.batch_support import (
    DEADLINE_S,
    DIRECT_LINE_COST,
    LINE_COST,
    assert_released_and_not_charged,
    batch_config,
    budget_usage,
    create_batch,
    error_codes,
    jsonl,
    line,
    sdk,
    set_budget,
    spend_rows,
    start_batch,
    two_held_lines,
    until,
    upload,
)
from tests.conftest import PRICE_SMALL, InProcessGateway, in_process_gateway
from tests.fake_batch_provider import RunningBatchProvider
from tests.fake_upstream import ANSWER, RunningUpstream
from tests.migrate import down_and_up, tables


@pytest.fixture
async def gw(
    store_url: str, upstream: RunningUpstream, provider: RunningBatchProvider
) -> AsyncIterator[InProcessGateway]:
    config = batch_config(store_url, upstream, provider, max_file_bytes=64_000)
    async with in_process_gateway(config) as running:
        yield running


async def test_a_batch_answers_in_input_order_at_the_batch_price_holding_then_settling(
    gw: InProcessGateway, provider: RunningBatchProvider, store_url: str
) -> None:
    await set_budget(gw)
    client = sdk(gw)
    content = jsonl(
        line("first", "one"),
        line("second", "two"),
        b"{not json",
        line("third", "three", model="auto"),
        line("fourth", "four"),
    )
    uploaded = await upload(client, content)
    assert uploaded.bytes == len(content)
    batch = await create_batch(client, uploaded.id)
    assert batch.status == "validating"
    batch = await until(client, batch.id, "in_progress")
    # `auto` routed the third line to `direct`, whose server has no batch API: it runs on its
    # own and is charged at once; the other three stay held while the provider works.
    deadline = time.monotonic() + DEADLINE_S
    while (held := await budget_usage(gw))["reserved_requests"] != 3:
        assert time.monotonic() < deadline, held
        await asyncio.sleep(0.05)
    assert Decimal(held["reserved_usd"]) > 0
    (direct,) = await spend_rows(store_url, 1)
    assert (direct.deployment, direct.cost_usd) == ("direct", DIRECT_LINE_COST)
    assert Decimal(held["spent_usd"]) == DIRECT_LINE_COST

    provider.fake.complete()
    batch = await until(client, batch.id, "completed")
    assert (batch.request_counts.total, batch.request_counts.completed) == (5, 4)
    assert batch.request_counts.failed == 1
    output = [
        orjson.loads(x)
        for x in (await client.files.content(batch.output_file_id)).read().splitlines()
    ]
    assert [o["custom_id"] for o in output] == ["first", "second", "third", "fourth"]
    answers = [o["response"]["body"]["choices"][0]["message"]["content"] for o in output]
    # `auto` chose another deployment, whose server has no batch API: its line ran on its own.
    assert answers == ["echo: one", "echo: two", ANSWER, "echo: four"]
    errors = [
        orjson.loads(x)
        for x in (await client.files.content(batch.error_file_id)).read().splitlines()
    ]
    assert [e["error"]["code"] for e in errors] == ["invalid_json"]

    rows = await spend_rows(store_url, 4)
    batch_rows = [r for r in rows if r.status == 200]
    assert len(batch_rows) == 4
    assert sorted(r.cost_usd for r in batch_rows) == [LINE_COST] * 3 + [DIRECT_LINE_COST]
    assert all(r.route_reason.startswith(f"batch {batch.id}: ") for r in batch_rows)
    assert {(r.api, r.latency_class) for r in batch_rows} == {("batch", "batch")}
    settled = await budget_usage(gw)
    assert Decimal(settled["reserved_usd"]) == 0 and settled["reserved_requests"] == 0
    assert Decimal(settled["spent_usd"]) == sum(r.cost_usd for r in batch_rows)
    # One provider job for the lines routed to `bulk`, with the deployment's API key.
    assert provider.fake.keys == {"Bearer sk-fake-upstream"}


async def test_a_cancelled_batch_cancels_upstream_and_releases_its_holds(
    gw: InProcessGateway, provider: RunningBatchProvider, store_url: str
) -> None:
    client = sdk(gw)
    batch = await two_held_lines(gw, client)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    batch = await until(client, batch.id, "cancelled")
    assert len(provider.fake.cancelled) == 1
    await assert_released_and_not_charged(gw, store_url)
    assert await error_codes(client, batch) == ["batch_cancelled"] * 2


async def test_a_cancel_while_the_last_jobs_are_collected_ends_the_batch_cancelled(
    gw: InProcessGateway, provider: RunningBatchProvider
) -> None:
    # The worker read the jobs, collected the finished ones, then wrote `finalizing` over a
    # cancel accepted meanwhile: the client was told `cancelling` and got `completed`.
    client = sdk(gw)
    batch = await two_held_lines(gw, client)
    worker = gw.app.state.batch_worker
    retrieve = worker.upstream.retrieve
    cancels: list[str] = []

    async def finished_then_a_cancel(*args: Any) -> Any:
        state = await retrieve(*args)
        if state.get("status") == "completed" and not cancels:
            # The round that found the provider's job finished, before it collects the job.
            cancels.append(batch.id)
            cancelled = await worker.store.request_cancel("search", batch.id)
            assert cancelled is not None and cancelled.status == "cancelling"
        return state

    worker.upstream.retrieve = finished_then_a_cancel
    provider.fake.complete()
    ended = await until(client, batch.id, "cancelled")
    assert cancels == [batch.id] and ended.status == "cancelled"


async def test_a_key_never_sees_another_teams_files_or_batches(gw: InProcessGateway) -> None:
    await gw.admin.team("other")
    other = sdk(gw, (await gw.admin.key("other"))["key"])
    client = sdk(gw)
    uploaded = await upload(client, jsonl(line("a", "x")))
    batch = await create_batch(client, uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await other.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        await create_batch(other, uploaded.id)
    assert (await other.files.list()).data == []
    assert (await other.batches.list()).data == []
    assert [f.id for f in (await client.files.list()).data] == [uploaded.id]
    assert [b.id for b in (await client.batches.list()).data] == [batch.id]


async def test_files_are_listed_read_and_deleted_and_a_bad_purpose_is_an_openai_error(
    gw: InProcessGateway,
) -> None:
    client = sdk(gw)
    uploaded = await upload(client, b"{}\n")
    assert (await client.files.retrieve(uploaded.id)).filename == "in.jsonl"
    assert (await client.files.content(uploaded.id)).read() == b"{}\n"
    assert (await client.files.delete(uploaded.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    assert refused.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        await sdk(gw, "sk-not-a-key").files.list()
    with pytest.raises(openai.APIStatusError) as too_large:
        await upload(client, b"x" * 64_001)
    assert too_large.value.status_code == 413


@asynccontextmanager
async def batch_store(store_url: str) -> AsyncIterator[BatchStore]:
    """The batch tables of a migrated store, closed after."""
    store = Store.connect(store_url)
    try:
        await store.migrate()
        yield BatchStore(store)
    finally:
        await store.aclose()


async def new_batch(batches: BatchStore) -> BatchRecord:
    return await batches.add_batch(
        "t", "k", "/v1/chat/completions", "file-x", timedelta(hours=24), None
    )


async def test_a_batch_lease_is_held_by_one_process_until_it_runs_out(store_url: str) -> None:
    async with batch_store(store_url) as batches:
        made = await new_batch(batches)
        assert await batches.lease(made.id, "one", 30)
        assert not await batches.lease(made.id, "two", 30)
        assert await batches.lease(made.id, "one", 0.001)  # renewed, now short
        await asyncio.sleep(0.05)
        assert await batches.lease(made.id, "two", 30)  # run out: taken over
        await batches.update_batch(made.id, status="completed")
        assert not await batches.lease(made.id, "two", 30)  # nothing left to drive


async def test_a_cancel_between_validation_and_its_end_is_kept(store_url: str) -> None:
    # The worker ends validation with a transition from `validating` only: a cancel that came
    # meanwhile stays (the worker read the status, then wrote in_progress over the cancel).
    async with batch_store(store_url) as batches:
        made, other = await new_batch(batches), await new_batch(batches)
        cancelled = await batches.request_cancel("t", made.id)
        assert cancelled is not None and cancelled.status == "cancelling"
        assert not await batches.update_batch_from(made.id, "validating", status="in_progress")
        after = await batches.batch("t", made.id)
        assert after is not None and after.status == "cancelling"
        assert await batches.update_batch_from(other.id, "validating", status="in_progress")
        moved = await batches.batch("t", other.id)
        assert moved is not None and moved.status == "in_progress"


async def test_revision_0011_adds_the_batch_tables_and_goes_back(store_url: str) -> None:
    added = {"files", "batches", "batch_jobs", "batch_lines"}
    at_head, at_0010, back_at_head = await down_and_up(store_url, "0010", tables)
    assert added <= at_head
    assert not added & at_0010
    assert added <= back_at_head


def test_the_batch_price_is_configured_or_the_model_databases_or_half_the_price() -> None:
    info = ModelInfo(
        price=TokenPrice(Decimal("1E-6"), Decimal("4E-6"), Decimal("1E-6")),
        batch_price=TokenPrice(Decimal("4E-7"), Decimal("2E-6"), Decimal("4E-7")),
    )
    specs = [
        ModelSpec(name="published", model="x/published"),
        ModelSpec(name="halved", model="x/priced", price=PRICE_SMALL),
        ModelSpec(
            name="configured",
            model="x/priced",
            price={**PRICE_SMALL, "batch_input_per_mtok": "0.1", "batch_output_per_mtok": "0.2"},
        ),
    ]
    catalog = Catalog.build(specs, lambda model: info if model == "x/published" else None)
    rates = {d.name: (d.batch_rate.input, d.batch_rate.output) for d in catalog.deployments}
    assert rates["published"] == (Decimal("4E-7"), Decimal("2E-6"))
    assert rates["halved"] == (Decimal("0.075") / 10**6, Decimal("0.3") / 10**6)
    assert rates["configured"] == (Decimal("0.1") / 10**6, Decimal("0.2") / 10**6)


async def test_lines_run_on_an_idle_local_engine_and_go_to_the_provider_batch_api_when_it_is_busy(
    upstream: RunningUpstream, provider: RunningBatchProvider, tmp_path: Path
) -> None:
    from tests.fake_engine import EngineState, RunningEngine
    from tests.local_support import local_config
    from tests.local_support import until as until_true

    with RunningEngine(EngineState("engine", engine="vllm")) as engine:
        probes = {"probe_interval_s": 0.05, "probe_timeout_s": 0.5, "stale_after_s": 0.5}
        config = local_config(tmp_path, upstream, "vllm", [engine.base_url], **probes)
        cloud = next(m for m in config["models"] if m["name"] == "cloud")
        cloud["api_base"] = provider.base_url  # the remote tier's provider has a batch API
        config["batches"] = {"poll_interval_s": 0.05}
        async with in_process_gateway(config) as gw:
            local = gw.app.state.gateway.local
            client = sdk(gw)
            await until_true(lambda: local.replicas("gpu")[0].reading is not None)

            async def run(name: str) -> list[dict[str, Any]]:
                lines = line(f"{name}-1", "one", "local"), line(f"{name}-2", "two", "local")
                batch = await start_batch(client, *lines)
                provider.fake.complete()
                batch = await until(client, batch.id, "completed")
                output = (await client.files.content(batch.output_file_id)).read()
                return [orjson.loads(x) for x in output.splitlines()]

            idle = await run("idle")
            assert [o["response"]["body"]["model"] for o in idle] == ["local-model"] * 2
            assert provider.fake.batches == {}  # nothing went to the provider

            engine.state.waiting = 20
            await until_true(lambda: local.states()["gpu"].spill is not None)
            busy = await run("busy")
            assert [o["custom_id"] for o in busy] == ["busy-1", "busy-2"]
            assert [o["response"]["body"]["model"] for o in busy] == ["fake-ok"] * 2
            (submitted,) = provider.fake.batches
            assert [r["custom_id"] for r in provider.fake.requests(submitted)] == ["0", "1"]


async def test_another_process_takes_over_a_batch_whose_driver_stopped(
    store_url: str, upstream: RunningUpstream, provider: RunningBatchProvider
) -> None:
    import httpx

    from gateway.app import create_app
    from gateway.settings import Settings
    from tests.conftest import gateway_env

    config = batch_config(store_url, upstream, provider, lease_s=0.5)
    async with in_process_gateway(config) as first:
        await set_budget(first)
        key, admin = first.key, first.admin.headers
        client = sdk(first)
        batch = await start_batch(client, line("a", "one"), line("b", "two"))
        await until(client, batch.id, "in_progress")
    # The first process is gone with the batch in progress; a second one carries it on.
    provider.fake.complete()
    app = create_app(Settings.model_validate(config), environ=gateway_env())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            second = openai.AsyncOpenAI(api_key=key, base_url="http://gateway/v1", http_client=http)
            done = await until(second, batch.id, "completed")
            output = (await second.files.content(done.output_file_id)).read().splitlines()
            await spend_rows(store_url, 2)
            usage = (await http.get("/admin/teams/search/usage", headers=admin)).json()["data"][0]
    # Charged by the second process; nothing left held.
    assert Decimal(usage["spent_usd"]) == 2 * LINE_COST and usage["reserved_requests"] == 0
    assert [orjson.loads(o)["custom_id"] for o in output] == ["a", "b"]
    assert len(provider.fake.batches) == 1  # not submitted twice
    rows = await spend_rows(store_url, 2)
    assert sorted(r.request_id for r in rows) == [f"{batch.id}-0", f"{batch.id}-1"]
    assert all(r.cost_usd == LINE_COST for r in rows)
