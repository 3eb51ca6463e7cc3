"""Graceful shutdown of `rightsize serve` (gateway/shutdown.py): SIGTERM turns /readyz to 503
while the process still serves, requests in flight finish, their spend rows are written and no
hold is left; a request past server.shutdown_timeout_s is cancelled and its hold released."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.ledger_build import open_ledger
from gateway.settings import Settings
from gateway.store import Store
from ledger.budgets import Budget
from ledger.periods import Period
from tests.conftest import (
    MASTER_KEY,
    LiveServer,
    gateway_config,
    gateway_env,
    spend_rows,
    write_config,
)
from tests.fake_upstream import ANSWER, RunningUpstream
from tests.replicas_support import wait_until

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
SLOW_S = 3.0  # fake-slow answers after this


def _server(tmp_path: Path, upstream: RunningUpstream, **server: Any) -> tuple[LiveServer, dict]:
    config = gateway_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    slow = dict(config["models"][1], name="direct-hang", timeout_s=30)
    slow["model"] = "openai/fake-slow"
    config["models"].append(slow)
    config["server"] = server
    env = gateway_env(RIGHTSIZE_SERVER__DRAIN_S=str(server.pop("drain_s")))
    live = LiveServer(write_config(tmp_path / "rightsize.yaml", config), env, ready_s=120)
    return live, config


def _team_key(server: LiveServer) -> str:
    with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=30) as client:
        assert client.post("/admin/teams", json={"name": "search"}).status_code == 201
        key = str(client.post("/admin/keys", json={"team": "search"}).json()["key"])
        budget = {"team": "search", "period": "monthly", "limit_usd": "10"}
        assert client.put("/admin/budgets", json=budget).status_code == 200
    return key


def _slow_request(server: LiveServer, key: str, answers: list[httpx.Response | Exception]) -> None:
    body = {"model": "direct-hang", "messages": [{"role": "user", "content": "hi"}]}
    try:
        answers.append(
            httpx.post(
                server.base_url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
        )
    except httpx.HTTPError as exc:
        answers.append(exc)


def _reserved(config: dict[str, Any]) -> int:
    async def read() -> int:
        settings = Settings.model_validate(config)
        store = Store.connect(settings.store_url())
        ledger = open_ledger(settings, store)
        try:
            [usage] = await ledger.usage([Budget("team", "search", Period.MONTHLY)])
            return usage.reserved.picousd
        finally:
            await ledger.aclose()
            await store.aclose()

    return asyncio.run(read())


def _start_slow_request(
    server: LiveServer, key: str, config: dict[str, Any]
) -> tuple[threading.Thread, list[httpx.Response | Exception]]:
    answers: list[httpx.Response | Exception] = []
    caller = threading.Thread(target=_slow_request, args=(server, key, answers))
    caller.start()
    wait_until(lambda: _reserved(config) > 0, 10, "the slow request's hold taken", 0.05)
    return caller, answers


def test_sigterm_reports_draining_serves_on_and_finishes_the_request_in_flight(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    server, config = _server(tmp_path, upstream, drain_s=1.5)
    key = _team_key(server)
    caller, answers = _start_slow_request(server, key, config)
    signalled = time.monotonic()

    server.process.send_signal(signal.SIGTERM)

    wait_until(
        lambda: httpx.get(server.base_url + "/readyz", timeout=2).status_code == 503, 1, "503"
    )
    ready = httpx.get(server.base_url + "/readyz", timeout=2)
    assert ready.json()["status"] == "draining"
    # Still serving while the load balancer takes it out: liveness and new requests answer.
    assert httpx.get(server.base_url + "/healthz", timeout=2).status_code == 200
    models = httpx.get(
        server.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5
    )
    assert models.status_code == 200
    server.process.wait(timeout=30)
    caller.join(timeout=30)

    [answer] = answers
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == ANSWER
    assert time.monotonic() - signalled >= 1.5  # the drain was served in full
    [row] = asyncio.run(spend_rows(config["store"]["url"], 1, timeout_s=5))
    assert row.request_id == answer.headers["x-request-id"] and row.status == 200
    assert _reserved(config) == 0
    server.stop()


def test_a_request_past_the_shutdown_timeout_is_cancelled_and_its_hold_released(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    server, config = _server(tmp_path, upstream, drain_s=0.2, shutdown_timeout_s=0.5)
    key = _team_key(server)
    caller, answers = _start_slow_request(server, key, config)

    server.process.send_signal(signal.SIGTERM)

    server.process.wait(timeout=SLOW_S)  # before the upstream would have answered
    caller.join(timeout=30)
    [answer] = answers
    assert not (isinstance(answer, httpx.Response) and answer.status_code == 200)
    # Released by the exiting process itself, not after the hold's TTL or a heartbeat timeout.
    assert _reserved(config) == 0
    server.stop()
