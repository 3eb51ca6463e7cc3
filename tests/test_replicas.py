"""Must-show (issue 25): three `rightsize serve` replicas behind HAProxy, on one Redis and one
PostgreSQL, as deploy/compose.yaml runs them (deploy/haproxy/haproxy.cfg, the migration Job
first, replicas that do not migrate).

A team's budget holds across replicas under 200 concurrent requests; an answer cached by one
replica is a hit on another; a key revoked on one is refused by all within the key cache's 5 s;
a rolling restart under steady load fails no request, loses no spend row and leaves no hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import KEY_CACHE_TTL_S
from gateway.ledger_build import open_ledger
from gateway.settings import Settings
from gateway.store import Store, from_picousd
from ledger.budgets import Budget
from ledger.periods import Period
from tests.conftest import (
    IN_CI,
    MASTER_KEY,
    PRICE_DIRECT,
    gateway_env,
    write_config,
)
from tests.fake_upstream import free_port
from tests.ledger_support import REDIS_URL, delete_prefix
from tests.replicas_support import REPO, HAProxy, Process, Replica, fresh_database, wait_until

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [
    {
        "role": "user",
        "content": "Please answer in one short sentence: what is the capital city of France, "
        "and why is it famous for art?",
    }
]
MAX_TOKENS = 7
COST = Decimal("0.0000539")  # the fake's usage (21 prompt, 7 completion) at PRICE_DIRECT
DRAIN_S = 2.0  # HAProxy checks every 200 ms, two failures: out of rotation within it


@dataclass
class Cluster:
    replicas: list[Replica]
    lb: HAProxy
    config: dict[str, Any]
    prefix: str

    def admin(self, base_url: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=base_url or self.lb.base_url, headers=ADMIN, timeout=30)

    def team_key(self, team: str, **budget: Any) -> dict[str, Any]:
        with self.admin() as client:
            assert client.post("/admin/teams", json={"name": team}).status_code == 201
            key = client.post("/admin/keys", json={"team": team}).json()
            if budget:
                response = client.put("/admin/budgets", json={"team": team, **budget})
                assert response.status_code == 200, response.text
        return dict(key)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("replicas")
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        message = "haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip("SKIPPED LOUDLY: " + message)
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    processes: list[Process] = []
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(fresh_database())
        cleanup.callback(delete_prefix, prefix)
        cleanup.callback(lambda: [p.stop() for p in reversed(processes)])
        upstream = Process(
            [sys.executable, "-m", "tests.fake_upstream", "--port", str(port := free_port())],
            directory / "upstream.log",
            dict(os.environ),
        )
        processes.append(upstream)
        upstream.start()
        config = _config(database, prefix, f"http://127.0.0.1:{port}/v1", directory)
        config_file = write_config(directory / "rightsize.yaml", config)
        env = gateway_env(RIGHTSIZE_SERVER__DRAIN_S=str(DRAIN_S))
        # The migration Job: once, before any replica starts (they do not migrate).
        migrate = [sys.executable, "-m", "gateway.cli", "migrate", "--config", str(config_file)]
        done = subprocess.run(migrate, env=env, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        replicas = [Replica(f"r{i}", config_file, env, directory) for i in range(3)]
        processes.extend(replicas)
        for replica in replicas:
            replica.start()
        lb = HAProxy(replicas, directory)
        processes.append(lb)
        lb.start()
        for replica in replicas:
            wait_until(replica.ready, 180, f"{replica.name} ready")
        wait_until(lambda: all(lb.up(r.name) for r in replicas), 10, "all replicas UP in HAProxy")
        yield Cluster(replicas, lb, config, prefix)


def _config(database: str, prefix: str, upstream: str, directory: Path) -> dict[str, Any]:
    def model(name: str, upstream_id: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": f"openai/{upstream_id}",
            "api_base": upstream,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": "openai_http",
            "tier": "standard" if name == "direct" else None,
            "price": PRICE_DIRECT,
        }

    return {
        "store": {"url": database, "redis_url": REDIS_URL, "migrate_on_start": False},
        # One deployment: every replica under the same prefixes, this test's own.
        "ledger": {"redis_prefix": prefix + "ledger:"},
        "cache": {
            "backend": "redis",
            "key_prefix": prefix + "cache:",
            "redis_timeout_ms": 500,  # a shared two-core host, not a production one
            "redis_retry_after_s": 0.2,
        },
        "routing": {"stickiness": {"key_prefix": prefix + "sticky:"}},
        "spend_log": {
            "flush_interval_ms": 20,
            "fallback_file": str(directory / "spend-log-unwritten.jsonl"),
            "journal_dir": str(directory / "journal"),
        },
        "models": [model("direct", "fake-ok"), model("direct-steady", "fake-steady")],
    }


async def _spend(cluster: Cluster, team: str, count: int, timeout_s: float = 20) -> list[Any]:
    """The team's spend rows once there are `count` (every replica's writer batches)."""
    store = Store.connect(cluster.config["store"]["url"])
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await store.spend(team=team, limit=100_000)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


async def _usage(cluster: Cluster, budget: Budget) -> Any:
    """The budget's counters as a fresh process sees them (expired holds dropped)."""
    settings = Settings.model_validate(cluster.config)
    store = Store.connect(settings.store_url())
    ledger = open_ledger(settings, store)
    try:
        [usage] = await ledger.usage([budget])
        return usage
    finally:
        await ledger.aclose()
        await store.aclose()


def _served(cluster: Cluster) -> dict[str, int]:
    """Requests HAProxy has sent to each replica so far."""
    return {name: int(row["stot"]) for name, row in cluster.lb.servers().items()}


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "direct", "messages": MESSAGES, "max_tokens": MAX_TOKENS, **fields}


def test_one_teams_budget_holds_across_replicas_under_200_concurrent_requests(
    cluster: Cluster,
) -> None:
    limit = COST * 50  # affords 50 of the 200 requests
    key = cluster.team_key("budget", period="total", limit_usd=str(limit))["key"]
    before = _served(cluster)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=cluster.lb.base_url, limits=limits, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/v1/chat/completions", json=_body(), headers=headers) for _ in range(200))
            )

    responses = asyncio.run(fire())

    served = _served(cluster)
    assert all(served[r.name] - before[r.name] >= 30 for r in cluster.replicas), (before, served)
    assert {r.status_code for r in responses} <= {200, 429}, [
        (r.status_code, r.text[:200]) for r in responses if r.status_code not in (200, 429)
    ][:3]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "budget_exceeded"
    admitted = sum(r.status_code == 200 for r in responses)
    rows = asyncio.run(_spend(cluster, "budget", 200))
    assert len(rows) == 200
    settled = sum((r.cost_usd for r in rows), Decimal(0))
    # docs/budgets.md: spend <= limit + what admitted requests used beyond their holds (0 here:
    # the hold counts max_tokens and more prompt tokens than the fake reports) + the last
    # stretch's one request; the limit being 50 requests' cost, the stretch passes nothing.
    assert settled <= limit
    assert 40 <= admitted <= 50, admitted
    assert sum(r.status == 200 for r in rows) == admitted
    usage = asyncio.run(_usage(cluster, Budget("team", "budget", Period.TOTAL)))
    assert from_picousd(usage.spent.picousd) == settled
    assert usage.reserved.picousd == 0


def test_an_answer_cached_by_one_replica_is_a_hit_on_the_others(cluster: Cluster) -> None:
    key = cluster.team_key("cache")["key"]
    headers = {"authorization": f"Bearer {key}"}
    body = _body(temperature=0, messages=[{"role": "user", "content": "Cache me, replica."}])
    first, *others = cluster.replicas

    stored = httpx.post(first.base_url + "/v1/chat/completions", json=body, headers=headers)
    answers = [
        httpx.post(r.base_url + "/v1/chat/completions", json=body, headers=headers) for r in others
    ]

    assert stored.status_code == 200 and stored.headers["x-rightsize-cache"] == "miss"
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-rightsize-cache"] == "hit"
        assert answer.json()["choices"] == stored.json()["choices"]


def test_a_key_revoked_on_one_replica_is_refused_by_all_within_the_key_cache_ttl(
    cluster: Cluster,
) -> None:
    key = cluster.team_key("revoke")
    headers = {"authorization": f"Bearer {key['key']}"}
    # Every replica has the key in its cache: the revocation must reach them through the store.
    for replica in cluster.replicas:
        assert httpx.get(replica.base_url + "/v1/models", headers=headers).status_code == 200

    with cluster.admin(cluster.replicas[0].base_url) as admin:
        assert admin.delete(f"/admin/keys/{key['id']}").status_code == 200
    revoked_at = time.monotonic()

    def refused_everywhere() -> bool:
        codes = [
            httpx.get(r.base_url + "/v1/models", headers=headers).status_code
            for r in cluster.replicas
        ]
        return all(code == 401 for code in codes)

    wait_until(refused_everywhere, KEY_CACHE_TTL_S + 1, "the revoked key refused by every replica")
    assert time.monotonic() - revoked_at <= KEY_CACHE_TTL_S + 1
    # And it stays refused, through the load balancer too.
    for _ in range(6):
        response = httpx.get(cluster.lb.base_url + "/v1/models", headers=headers)
        assert response.status_code == 401


def test_a_rolling_restart_under_steady_load_fails_no_request_and_loses_no_spend_row(
    cluster: Cluster,
) -> None:
    key = cluster.team_key("rolling", period="monthly", limit_usd="100")["key"]
    headers = {"authorization": f"Bearer {key}"}
    results: list[tuple[int, str]] = []  # (status, x-request-id) of every request sent
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(index: int) -> None:
        # Half the clients stream a 0.8 s answer: streams are in flight at every SIGTERM.
        streaming = index % 2 == 1
        body = _body(model="direct-steady", stream=True) if streaming else _body()
        async with httpx.AsyncClient(base_url=cluster.lb.base_url, timeout=30) as http:
            while not stop.is_set():
                try:
                    async with http.stream(
                        "POST", "/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        text = (await response.aread()).decode()
                    results.append((response.status_code, response.headers.get("x-request-id", "")))
                    if response.status_code != 200 or (streaming and "[DONE]" not in text):
                        failures.append(f"{response.status_code}: {text[:300]}")
                except httpx.HTTPError as exc:
                    results.append((0, ""))
                    failures.append(repr(exc))

    def drained_out(replica: Replica) -> bool:
        # Out of rotation on /readyz's 503 (L7STS) while the replica still serves.
        server = cluster.lb.servers()[replica.name]
        taken_out = server["status"] == "DOWN" and server["check_status"] == "L7STS"
        assert not taken_out or replica.alive(), f"{replica.name} stopped before HAProxy saw it"
        return taken_out

    async def restart(replica: Replica) -> None:
        # SIGTERM: /readyz turns 503, HAProxy takes it out, it serves DRAIN_S more, finishes
        # what is in flight, flushes its spend log, releases its holds and exits.
        assert replica.process is not None
        replica.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: drained_out(replica), DRAIN_S, "drained")
        code = await asyncio.to_thread(replica.wait_exit, 30)
        assert code in (0, -signal.SIGTERM), f"{replica.name} exited {code}"
        replica.start()
        await asyncio.to_thread(wait_until, replica.ready, 120, f"{replica.name} back")
        await asyncio.to_thread(wait_until, lambda: cluster.lb.up(replica.name), 10, "UP")

    async def run() -> None:
        clients = [asyncio.create_task(client(i)) for i in range(8)]
        await asyncio.sleep(1)
        for replica in cluster.replicas:
            await restart(replica)
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(run())

    assert failures == [], failures[:5]
    assert len(results) >= 50, len(results)
    sent = {request_id for _, request_id in results}
    rows = asyncio.run(_spend(cluster, "rolling", len(results)))
    assert len(rows) == len(results)
    assert {r.request_id for r in rows} == sent
    usage = asyncio.run(_usage(cluster, Budget("team", "rolling", Period.MONTHLY)))
    assert usage.reserved.picousd == 0
    assert from_picousd(usage.spent.picousd) == sum((r.cost_usd for r in rows), Decimal(0))
