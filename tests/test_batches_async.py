"""A single chat request answered asynchronously (`Prefer: respond-async` and a batch class),
batch expiry and bounded provider-job submission retries (issue 26); on SQLite and PostgreSQL,
the real openai SDK against the gateway and a fake provider's batch API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from gateway.batches import BatchStore
from gateway.store import Store
from tests.batch_support import (
    DEADLINE_S,
    DIRECT_LINE_COST,
    LINE_COST,
    assert_released_and_not_charged,
    batch_config,
    budget_usage,
    error_codes,
    line,
    sdk,
    set_budget,
    spend_rows,
    start_batch,
    two_held_lines,
    until,
)
from tests.conftest import InProcessGateway, in_process_gateway
from tests.fake_batch_provider import RunningBatchProvider
from tests.fake_upstream import ANSWER, RunningUpstream
from tests.migrate import down_and_up

DEFER = {"prefer": "respond-async", "x-rightsize-latency": "batch"}
MESSAGES: list[Any] = [{"role": "user", "content": "later, please"}]


@pytest.fixture
async def gw(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(batch_config(store_url, upstream, provider)) as running:
        yield running


async def poll(gw: InProcessGateway, url: str, key: str | None = None) -> httpx.Response:
    """GET the job until it is no longer pending (202)."""
    headers = {"authorization": f"Bearer {key or gw.key}"}
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = await gw.client.get(url, headers=headers)
        if response.status_code != 202:
            return response
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)


def failing_submissions(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
    failures: int,
    backoff_s: float,
) -> AbstractAsyncContextManager[InProcessGateway]:
    """A gateway trying a provider job's submission three times, `backoff_s` apart, against a
    provider that refuses its first `failures` submissions."""
    provider.fake.fail_creates = failures
    made = batch_config(
        store_url, upstream, provider, submit_attempts=3, submit_backoff_s=backoff_s
    )
    gateway: AbstractAsyncContextManager[InProcessGateway] = in_process_gateway(made)
    return gateway


async def test_a_deferred_request_answers_202_then_its_completion_at_the_batch_price(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
    store_url: str,
) -> None:
    await set_budget(gw)
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="bulk", messages=MESSAGES, max_tokens=50, extra_headers=DEFER
    )
    assert raw.status_code == 202
    job = raw.http_response.json()
    assert job["object"] == "chat.completion.job" and job["status"] == "validating"
    assert job["result_url"] == f"/v1/chat/completions/jobs/{job['id']}"
    assert raw.headers["location"] == job["result_url"]
    # Held at the batch price while the provider works; the job says it is still running.
    deadline = time.monotonic() + DEADLINE_S
    while (await budget_usage(gw))["reserved_requests"] != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    headers = {"authorization": f"Bearer {gw.key}"}
    pending = await gw.client.get(job["result_url"], headers=headers)
    assert pending.status_code == 202
    assert pending.json()["status"] in ("validating", "in_progress")

    provider.fake.complete()
    done = await poll(gw, job["result_url"])
    assert done.status_code == 200, done.text
    completion = openai.types.chat.ChatCompletion.model_validate(done.json())
    assert completion.choices[0].message.content == "echo: later, please"
    assert done.headers["x-rightsize-model"] == "bulk"
    # The spend row, by hand: PRICE_SMALL halved for the batch.
    (row,) = await spend_rows(store_url, 1)
    assert (row.request_id, row.deployment, row.status) == (f"{job['id']}-0", "bulk", 200)
    assert row.cost_usd == LINE_COST and (row.api, row.latency_class) == ("batch", "batch")
    usage = await budget_usage(gw)
    assert Decimal(usage["spent_usd"]) == LINE_COST and usage["reserved_requests"] == 0
    (submitted,) = provider.fake.batches
    (sent,) = provider.fake.requests(submitted)
    assert sent["body"]["messages"] == MESSAGES


async def test_without_a_batch_class_or_without_the_opt_in_the_answer_comes_at_once(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
) -> None:
    client = sdk(gw)
    for headers in ({"prefer": "respond-async"}, {"x-rightsize-latency": "batch"}):
        raw = await client.chat.completions.with_raw_response.create(
            model="direct", messages=MESSAGES, extra_headers=headers
        )
        assert raw.status_code == 200
        assert raw.parse().choices[0].message.content == ANSWER
    assert provider.fake.batches == {}
    assert (await client.batches.list()).data == []


async def test_hold_open_answers_inline_when_the_result_arrives_in_time(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
) -> None:
    made = batch_config(store_url, upstream, provider, hold_open_s=DEADLINE_S)
    async with in_process_gateway(made) as gw:
        await set_budget(gw)
        # `direct` has no batch API: its line runs at once through its interactive provider.
        raw = await sdk(gw).chat.completions.with_raw_response.create(
            model="direct", messages=MESSAGES, extra_headers=DEFER
        )
        assert raw.status_code == 200
        assert raw.parse().choices[0].message.content == ANSWER
        assert raw.headers["x-rightsize-model"] == "direct"
        (row,) = await spend_rows(store_url, 1)
        assert row.cost_usd == DIRECT_LINE_COST and row.api == "batch"


async def test_a_job_is_found_by_its_own_team_only(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
) -> None:
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="bulk", messages=MESSAGES, extra_headers=DEFER
    )
    url = raw.http_response.json()["result_url"]
    await gw.admin.team("other")
    other = (await gw.admin.key("other"))["key"]
    refused = await gw.client.get(url, headers={"authorization": f"Bearer {other}"})
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"
    mine = await gw.client.get(url, headers={"authorization": f"Bearer {gw.key}"})
    assert mine.status_code == 202
    # A batch made through /v1/batches is not a chat job.
    batch = await start_batch(sdk(gw), line("a", "x"))
    plain = await gw.client.get(
        f"/v1/chat/completions/jobs/{batch.id}", headers={"authorization": f"Bearer {gw.key}"}
    )
    assert plain.status_code == 404


async def test_a_failed_job_answers_the_openai_error(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
) -> None:
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="direct-400", messages=MESSAGES, extra_headers=DEFER
    )
    done = await poll(gw, raw.http_response.json()["result_url"])
    assert done.status_code == 400, done.text
    assert done.json()["error"]["type"] == "invalid_request_error"


async def test_a_deferred_request_cannot_stream(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk(gw).chat.completions.create(
            model="bulk", messages=MESSAGES, stream=True, extra_headers=DEFER
        )
    assert refused.value.body["param"] == "stream"  # type: ignore[index]


async def test_a_batch_past_its_expiry_is_expired_its_holds_released_not_charged(
    gw: InProcessGateway,
    provider: RunningBatchProvider,
    store_url: str,
) -> None:
    client = sdk(gw)
    batch = await two_held_lines(gw, client)
    # Its 24 hours are over (moved back rather than waited for).
    store = Store.connect(store_url)
    try:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await BatchStore(store).update_batch(batch.id, expires_at=past)
    finally:
        await store.aclose()
    expired = await until(client, batch.id, "expired")
    assert expired.expired_at is not None
    assert len(provider.fake.cancelled) == 1
    await assert_released_and_not_charged(gw, store_url)
    assert await error_codes(client, expired) == ["batch_expired"] * 2


async def test_a_failed_submission_is_retried_and_then_succeeds(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
) -> None:
    async with failing_submissions(store_url, upstream, provider, 2, backoff_s=0) as gw:
        client = sdk(gw)
        batch = await start_batch(client, line("a", "x"))
        await until(client, batch.id, "in_progress")
        provider.fake.complete()
        done = await until(client, batch.id, "completed")
    assert provider.fake.create_calls == 3
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)


async def test_submission_gives_up_after_its_tries_failing_its_lines_and_releasing_holds(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
) -> None:
    async with failing_submissions(store_url, upstream, provider, 1000, backoff_s=0) as gw:
        await set_budget(gw)
        client = sdk(gw)
        batch = await start_batch(client, line("a", "one"), line("b", "two"))
        done = await until(client, batch.id, "completed")
        usage = await budget_usage(gw)
        codes = await error_codes(client, done)
    assert provider.fake.create_calls == 3
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
    assert codes == ["batch_submit_failed"] * 2
    assert Decimal(usage["reserved_usd"]) == 0 and usage["reserved_requests"] == 0
    assert Decimal(usage["spent_usd"]) == 0


async def test_a_failed_submission_waits_out_its_backoff(
    store_url: str,
    upstream: RunningUpstream,
    provider: RunningBatchProvider,
) -> None:
    async with failing_submissions(store_url, upstream, provider, 1000, backoff_s=3600) as gw:
        client = sdk(gw)
        batch = await start_batch(client, line("a", "x"))
        store = BatchStore(gw.app.state.gateway.store)
        deadline = time.monotonic() + DEADLINE_S
        while not (jobs := await store.jobs(batch.id)) or jobs[0].attempts < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        (job,) = jobs
        retry_at = job.retry_at if job.retry_at.tzinfo else job.retry_at.replace(tzinfo=UTC)
        assert retry_at > datetime.now(UTC) + timedelta(seconds=3000)
        # Many polls later: still one try, and the batch still validating.
        await asyncio.sleep(0.5)
        assert provider.fake.create_calls == 1
        assert (await client.batches.retrieve(batch.id)).status == "validating"


async def test_revision_0012_adds_expiry_and_retry_columns_and_goes_back(store_url: str) -> None:
    from sqlalchemy import inspect

    def columns(connection: Any) -> set[str]:
        found = inspect(connection)
        return {f"batches.{c['name']}" for c in found.get_columns("batches")} | {
            f"batch_jobs.{c['name']}" for c in found.get_columns("batch_jobs")
        }

    added = {"batches.expired_at", "batch_jobs.attempts", "batch_jobs.retry_at"}
    at_head, at_0011, back_at_head = await down_and_up(store_url, "0011", columns)
    assert added <= at_head
    assert not added & at_0011
    assert added <= back_at_head
