"""Must-show (issue 24): /metrics, parsed with prometheus-client's own parser, counts what was
sent (routed requests, a cache hit, a budget denial, a 401), summed over `serve --workers 2`;
no series names a key or a prompt; the JSON request log line carries its fields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics, new_multiproc_dir
from gateway.request_log import FIELDS_ATTR, JsonFormatter
from gateway.spend import SpendWriter, encode
from gateway.store import Store
from tests.conftest import (
    MASTER_KEY,
    InProcessGateway,
    gateway_config,
    gateway_env,
    in_process_gateway,
    write_config,
)
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream
from tests.test_spend_durability import _record, _refuse_team
from tests.test_workers import Serve, light_config, servers  # noqa: F401 (fixture)

PROMPT = "Prove that the square root of two is irrational, step by step."
SCRAPE_KEY = "test-scrape-key"
Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    """Every sample of a scrape, through the library's own parser."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a series' samples whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


async def scrape(gw: InProcessGateway, key: str = MASTER_KEY) -> Samples:
    response = await gw.client.get("/metrics", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def ask(gw: InProcessGateway, key: str, **body: Any) -> Any:
    request = {
        "model": "auto",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        **body,
    }
    return gw.client.post(
        "/v1/chat/completions", json=request, headers={"authorization": f"Bearer {key}"}
    )


async def budget(gw: InProcessGateway, team: str, limit_usd: str) -> None:
    body = {"team": team, "period": "total", "limit_usd": limit_usd}
    response = await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)
    assert response.status_code == 200, response.text


@pytest.fixture
async def gw(upstream: RunningUpstream, tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    config = gateway_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    async with in_process_gateway(config, gateway_env(RIGHTSIZE_METRICS_KEY=SCRAPE_KEY)) as running:
        yield running


async def test_metrics_count_routed_requests_cache_hits_budget_denials_and_401s(
    gw: InProcessGateway,
) -> None:
    await budget(gw, "search", "100")
    await gw.admin.team("capped")
    capped = await gw.admin.key("capped")
    # One pico-dollar: the first request is lent the last stretch, the second is refused.
    await budget(gw, "capped", "0.000000000001")

    routed = await ask(gw, gw.key)
    hit = await ask(gw, gw.key)
    spent = await ask(gw, capped["key"], temperature=0.5)  # not cacheable
    denied = await ask(gw, capped["key"], temperature=0.5)
    unknown = await ask(gw, "sk-not-a-key")
    assert (routed.status_code, hit.status_code, spent.status_code) == (200, 200, 200)
    assert hit.headers["x-rightsize-cache"] == "hit"
    assert (denied.status_code, unknown.status_code) == (429, 401)

    samples = await scrape(gw)

    deployment, tier = routed.headers["x-rightsize-model"], routed.headers["x-rightsize-tier"]
    requests = "rightsize_requests_total"
    assert total(samples, requests) == 5
    assert total(samples, requests, team="search", deployment=deployment, status="200") == 2
    assert total(samples, requests, team="capped", status="200") == 1
    assert total(samples, requests, team="capped", status="429") == 1
    assert total(samples, requests, team="", status="401") == 1
    assert total(samples, "rightsize_cache_lookups_total", team="search", result="miss") == 1
    assert total(samples, "rightsize_cache_lookups_total", team="search", result="hit") == 1
    assert total(samples, "rightsize_cache_lookups_total", team="capped") == 0
    bypasses = "rightsize_cache_bypasses_total"
    assert total(samples, bypasses, reason="not_deterministic") == 2
    assert total(samples, "rightsize_budget_denials_total", team="capped", kind="budget") == 1
    assert total(samples, "rightsize_budget_denials_total") == 1
    # The routed request and the cache hit (a hit still counts against rate limits).
    assert total(samples, "rightsize_budget_holds_total", team="search") == 2
    assert total(samples, "rightsize_budget_holds_total", team="capped") == 1  # not the refused
    # The router decided for the three requests past the cache; the hit ran no router.
    assert total(samples, "rightsize_routing_decisions_total", tier=tier, requested="auto") >= 1
    assert total(samples, "rightsize_routing_decisions_total") == 3
    assert total(samples, "rightsize_router_reasoning_demand_count") == 3
    demand = float(routed.headers["x-rightsize-demand"])
    assert total(samples, "rightsize_router_reasoning_demand_sum") >= demand - 0.0005
    # Tokens and money: the routed request's alone (the hit sent nothing upstream).
    usage = routed.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    tokens = "rightsize_tokens_total"
    assert total(samples, tokens, team="search", deployment=deployment, kind="prompt") == (
        PROMPT_TOKENS
    )
    assert total(samples, tokens, team="search", kind="completion") == COMPLETION_TOKENS
    cost = total(samples, "rightsize_cost_usd_total", team="search", deployment=deployment)
    assert cost == pytest.approx(float(Decimal(routed.headers["x-rightsize-cost-usd"])))
    assert total(samples, "rightsize_cache_saved_usd_total", team="search") == pytest.approx(cost)
    # Two upstream calls: the routed request and the capped team's first (auto routes both to
    # the same deployment, the prompt being the same).
    assert total(samples, "rightsize_upstream_latency_seconds_count", deployment=deployment) == 2
    assert total(samples, "rightsize_gateway_overhead_seconds_count") == 5


async def test_a_streamed_request_is_counted_when_its_stream_ends(gw: InProcessGateway) -> None:
    body = {"model": "direct", "stream": True, "stream_options": {"include_usage": True}}
    response = await ask(gw, gw.key, temperature=0.5, **body)
    assert response.status_code == 200, response.text
    chunks = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    usage = chunks[-1]["usage"]

    samples = await scrape(gw)

    assert total(samples, "rightsize_requests_total", deployment="direct", status="200") == 1
    tokens = "rightsize_tokens_total"
    assert total(samples, tokens, kind="prompt") == usage["prompt_tokens"]
    assert total(samples, tokens, kind="completion") == usage["completion_tokens"]
    cost = total(samples, "rightsize_cost_usd_total", team="search", deployment="direct")
    assert cost == pytest.approx(float(usage["cost_usd"]))


async def test_routing_decisions_are_counted_by_each_rule_that_acted(
    gw: InProcessGateway,
) -> None:
    # This configuration has no policy tiers: `auto` takes the default tier.
    routed = await ask(gw, gw.key, temperature=0.5)
    tier = await ask(gw, gw.key, model="standard", temperature=0.5)
    pinned = await ask(gw, gw.key, model="direct", temperature=0.5)
    assert [r.status_code for r in (routed, tier, pinned)] == [200, 200, 200]

    samples = await scrape(gw)

    rules = "rightsize_routing_rules_total"
    assert total(samples, rules, tier=routed.headers["x-rightsize-tier"], rule="default") == 1
    assert total(samples, rules, tier="standard", rule="tier") == 1
    assert total(samples, rules, rule="pinned") == 1
    assert total(samples, rules) == 3  # nothing else acted


async def test_each_budgeted_teams_used_share_is_a_gauge(gw: InProcessGateway) -> None:
    await budget(gw, "search", "0.01")
    response = await ask(gw, gw.key, model="direct", temperature=0.5)
    assert response.status_code == 200, response.text
    cost = Decimal(response.headers["x-rightsize-cost-usd"])
    await gw.admin.team("unbudgeted")

    samples = await scrape(gw)

    used = total(samples, "rightsize_budget_used_ratio", team="search")
    assert used == pytest.approx(float(cost / Decimal("0.01")))
    assert not [s for s in samples if s[1].get("team") == "unbudgeted"]


async def test_a_stream_records_its_time_to_first_token_and_a_plain_answer_none(
    gw: InProcessGateway,
) -> None:
    streamed = await ask(gw, gw.key, model="direct", stream=True, temperature=0.5)
    plain = await ask(gw, gw.key, model="direct", temperature=0.5)
    assert (streamed.status_code, plain.status_code) == (200, 200)

    samples = await scrape(gw)

    ttft = "rightsize_time_to_first_token_seconds"
    assert total(samples, f"{ttft}_count", deployment="direct") == 1
    assert total(samples, f"{ttft}_sum", deployment="direct") > 0
    assert total(samples, "rightsize_upstream_latency_seconds_count", deployment="direct") == 2


async def test_no_series_names_a_key_a_request_id_or_the_prompt(gw: InProcessGateway) -> None:
    response = await ask(gw, gw.key, temperature=0.5)
    assert response.status_code == 200, response.text
    # A model name is client text: an unknown one (404) must not become a label value.
    assert (await ask(gw, gw.key, model="model-of-the-client")).status_code == 404
    keys = (await gw.client.get("/admin/keys", headers=gw.admin.headers)).json()["data"]

    samples = await scrape(gw)

    labels = {name for _, have, _ in samples for name in have}
    values = {value for _, have, _ in samples for value in have.values()}
    assert not any("key" in name for name in labels), labels
    forbidden = {gw.key, PROMPT, response.headers["x-request-id"], "model-of-the-client"}
    forbidden |= {k["id"] for k in keys} | {k.get("key_hint") for k in keys}
    assert not values & forbidden, values & forbidden
    assert "search" in values  # series are labelled by team


async def test_metrics_take_the_master_or_the_scrape_key_and_no_tenant_key(
    gw: InProcessGateway,
) -> None:
    assert (await gw.client.get("/metrics")).status_code == 401
    tenant = await gw.client.get("/metrics", headers={"authorization": f"Bearer {gw.key}"})
    assert tenant.status_code == 401
    await scrape(gw, SCRAPE_KEY)
    await scrape(gw, MASTER_KEY)


async def test_metrics_public_serves_without_a_key_and_off_is_404(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = gateway_config(f"sqlite:///{tmp_path / 'a.db'}", upstream, router={"enabled": False})
    config["server"] = {"metrics_public": True}
    async with in_process_gateway(config) as gw:
        response = await gw.client.get("/metrics")
        assert response.status_code == 200
        assert "rightsize_requests_total" in response.text
    config = gateway_config(f"sqlite:///{tmp_path / 'b.db'}", upstream, router={"enabled": False})
    config["server"] = {"metrics": False}
    async with in_process_gateway(config) as gw:
        response = await gw.client.get("/metrics", headers=gw.admin.headers)
        assert response.status_code == 404


async def test_json_log_format_writes_one_line_per_request_with_its_fields(
    upstream: RunningUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rightsize.requests")
    config = gateway_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    config["server"] = {"log_format": "json"}
    async with in_process_gateway(config) as gw:
        key = (await gw.client.get("/admin/keys", headers=gw.admin.headers)).json()["data"][0]
        response = await ask(gw, gw.key)
        assert response.status_code == 200, response.text

    lines = [r for r in caplog.records if r.name == "rightsize.requests"]
    assert len(lines) == 1
    line = json.loads(JsonFormatter().format(lines[0]))
    headers = response.headers
    assert line["event"] == "request"
    assert line["request_id"] == headers["x-request-id"]
    assert (line["team"], line["key_id"]) == ("search", key["id"])
    assert (line["requested_model"], line["model"]) == ("auto", headers["x-rightsize-model"])
    assert line["tier"] == headers["x-rightsize-tier"]
    assert f"{line['demand']:.3f}" == headers["x-rightsize-demand"]
    assert (line["cache"], line["status"]) == ("miss", 200)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert line["cost_usd"] == headers["x-rightsize-cost-usd"]
    assert line["overhead_ms"] == pytest.approx(float(headers["x-rightsize-overhead-ms"]), abs=1e-3)
    assert PROMPT not in json.dumps(line) and gw.key not in json.dumps(line)
    assert getattr(lines[0], FIELDS_ATTR)["key_id"] == key["id"]


async def test_text_log_format_writes_no_request_line(
    gw: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rightsize.requests")
    assert (await ask(gw, gw.key)).status_code == 200
    assert not [r for r in caplog.records if r.name == "rightsize.requests"]


async def test_spend_rows_replayed_unwritten_and_still_failing_are_counted(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'rightsize.db'}"
    store = Store.connect(url)
    await store.migrate()
    fallback = tmp_path / "spend-log-unwritten.jsonl"
    fallback.write_bytes(encode(_record("good", "search")) + encode(_record("bad", "refused")))
    await _refuse_team(store, "refused")
    metrics = Metrics()
    try:
        writer = SpendWriter(
            lambda: Store.connect(url),
            flush_interval_s=0.05,
            batch_size=500,
            fallback_file=fallback,
            journal_dir=tmp_path / "journal",
            observer=metrics,
        )
        await writer.start()  # replays the file: one row written, one still refused
        writer.record(_record("refused-again", "refused"))
        await writer.aclose()  # the store refuses it: into the fallback file
    finally:
        await _refuse_team(store, None)
        await store.aclose()

    samples = parse(metrics.exposition().decode())
    # The refused row goes back to the file on replay (unwritten again), then the new one.
    assert (writer.replayed, writer.unwritten, writer.still_failing) == (1, 2, 1)
    assert total(samples, "rightsize_spend_log_rows_replayed_total") == 1
    assert total(samples, "rightsize_spend_log_rows_unwritten_total") == 2
    assert total(samples, "rightsize_spend_log_rows_still_failing") == 1


LATE_MULTIPROC = """\
import os, sys
import prometheus_client  # imported first: the library chose single-process mode
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from gateway.metrics import Metrics, MultiprocessTooLate
try:
    Metrics.from_environment()
except MultiprocessTooLate:
    print("refused")
"""


def test_a_multiprocess_directory_set_after_import_fails_loudly(tmp_path: Path) -> None:
    # Its values would stay in memory while a scrape sums the (empty) files: zeros, silently.
    result = subprocess.run(
        [sys.executable, "-c", LATE_MULTIPROC, str(tmp_path)],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "refused", result.stderr


def test_a_new_serve_run_removes_the_directories_of_dead_supervisors_only() -> None:
    # A SIGKILLed supervisor cannot remove its directory: the next run does.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid is now free (reaped)
    parent = Path(tempfile.gettempdir())
    dead = Path(tempfile.mkdtemp(prefix=f"rightsize-metrics-{ended.pid}-", dir=parent))
    live = Path(tempfile.mkdtemp(prefix=f"rightsize-metrics-{os.getppid()}-", dir=parent))
    mine = None
    try:
        mine = new_multiproc_dir()
        assert mine.name.startswith(f"rightsize-metrics-{os.getpid()}-") and mine.is_dir()
        assert not dead.exists()
        assert live.exists()  # its supervisor still runs
    finally:
        for directory in (dead, live, mine):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def test_two_workers_metrics_are_the_sums_over_both(
    upstream: RunningUpstream,
    tmp_path: Path,
    servers: list[Serve],  # noqa: F811 (the fixture)
) -> None:
    config = light_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    # JSON lines name the process that served each request: both workers must have served.
    config["server"] = {"log_format": "json"}
    servers.append(Serve(write_config(tmp_path / "rightsize.yaml", config), 2))
    server = servers[-1]
    server.wait_workers(2)
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=admin, timeout=60) as client:
        assert client.post("/admin/teams", json={"name": "search"}).status_code == 201
        key = client.post("/admin/keys", json={"team": "search"}).json()["key"]

    sent = 40

    async def burst() -> list[httpx.Response]:
        body = {"model": "direct", "messages": [{"role": "user", "content": PROMPT}]}
        headers = {"authorization": f"Bearer {key}"}

        async def one() -> httpx.Response:
            # A connection each: the kernel hands new connections to either worker.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
                return await c.post("/v1/chat/completions", json=body, headers=headers)

        return await asyncio.gather(*(one() for _ in range(sent)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * sent, responses[0].text

    served_by = {
        line["pid"]
        for line in map(_json_or_none, server.output().splitlines())
        if line and line.get("event") == "request"
    }
    assert len(served_by) == 2, served_by
    for _ in range(4):  # whichever worker answers the scrape, it answers for both
        with httpx.Client(base_url=server.base_url, headers=admin, timeout=30) as client:
            samples = parse(client.get("/metrics").text)
        assert total(samples, "rightsize_requests_total", team="search", status="200") == sent
        tokens = total(samples, "rightsize_tokens_total", team="search", kind="prompt")
        assert tokens == sent * PROMPT_TOKENS


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
