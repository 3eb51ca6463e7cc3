"""Hot reload (issue 21): POST /admin/reload and SIGHUP take up a new policy or router artifact
without a restart, atomically per request; requests in flight finish on the old snapshot. Under
`serve --workers N`, SIGHUP to the supervisor and the endpoint on any worker reload every worker."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from router.artifact import default_artifact_dir
from tests.conftest import (
    MASTER_KEY,
    Admin,
    LiveServer,
    gateway_config,
    gateway_env,
    live_server,
    live_spend_row,
    write_config,
)
from tests.fake_upstream import ANSWER, RunningUpstream
from tests.test_workers import Serve

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [{"role": "user", "content": "Say hello."}]


def reload_config(store_url: str, upstream: RunningUpstream, *, light: str) -> dict[str, Any]:
    """The test configuration with the `light` tier served by `light` (small or direct) and
    a held-stream model beside it."""
    config = gateway_config(store_url, upstream)
    # Its own spend directory each call would be a change a reload refuses (spend_log): one
    # per store instead.
    spend_dir = Path(store_url.removeprefix("sqlite:///")).parent
    config["spend_log"]["fallback_file"] = str(spend_dir / "spend-log-unwritten.jsonl")
    config["spend_log"]["journal_dir"] = str(spend_dir / "journal")
    tiers = {"small": "light", "direct": "standard"}
    if light == "direct":
        tiers = {"small": "standard", "direct": "light"}
    for model in config["models"]:
        if model["name"] in tiers:
            model["tier"] = tiers[model["name"]]
    held = dict(config["models"][1], name="direct-held", model="openai/fake-held", tier=None)
    config["models"].append(held)
    return config


class Served:
    def __init__(self, live: LiveServer, config_file: Path, store_url: str) -> None:
        self.live = live
        self.config_file = config_file
        self.store_url = store_url

    def admin_reload(self) -> httpx.Response:
        return httpx.post(self.live.base_url + "/admin/reload", headers=ADMIN, timeout=60)


@pytest.fixture(scope="module")
def served(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("reload")
    store_url = f"sqlite:///{directory / 'rightsize.db'}"
    with live_server(reload_config(store_url, upstream, light="small"), directory) as live:
        yield Served(live, directory / "rightsize.yaml", store_url)


@pytest.fixture
def served_small(served: Served, upstream: RunningUpstream) -> Served:
    """The served gateway with `light` on `small` again, whatever the last test left."""
    write_config(served.config_file, reload_config(served.store_url, upstream, light="small"))
    response = served.admin_reload()
    assert response.status_code == 200, response.text
    upstream.fake.release_held.clear()
    upstream.fake.held_started.clear()
    return served


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    with httpx.Client(base_url=served.live.base_url, headers=ADMIN) as admin:
        team = f"reload-{os.getpid()}-{time.monotonic_ns()}"
        assert admin.post("/admin/teams", json={"name": team}).status_code == 201
        key = admin.post("/admin/keys", json={"team": team}).json()["key"]
    return openai.OpenAI(base_url=served.live.base_url + "/v1", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, model: str = "light") -> httpx.Headers:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == ANSWER
    return raw.headers


def test_reload_endpoint_routes_the_next_request_by_the_new_policy(
    served_small: Served, client: openai.OpenAI, upstream: RunningUpstream
) -> None:
    before = ask(client)
    assert before["x-rightsize-model"] == "small"
    write_config(
        served_small.config_file, reload_config(served_small.store_url, upstream, light="direct")
    )

    response = served_small.admin_reload()

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["previous"]["config_hash"] == before["x-rightsize-config"]
    assert body["config_hash"] != before["x-rightsize-config"]
    assert body["router_artifact"] == before["x-rightsize-router-artifact"]
    assert body["changed"] == ["models"]
    assert body["other_workers_asked"] == 0  # one process: no supervisor to ask
    after = ask(client)
    assert after["x-rightsize-model"] == "direct"
    assert after["x-rightsize-config"] == body["config_hash"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"router": {"no_such_setting": 1}}, "router.no_such_setting"),
        ({"server": {"port": 1}}, "server"),  # valid, but taken up only at start
        ({"batches": {"poll_interval_s": 9}}, "batches"),  # the batch worker's, built at start
    ],
)
def test_a_config_that_does_not_load_is_a_400_and_routing_is_unchanged(
    served_small: Served,
    client: openai.OpenAI,
    upstream: RunningUpstream,
    change: dict[str, Any],
    named: str,
) -> None:
    before = ask(client)
    config = reload_config(served_small.store_url, upstream, light="direct")
    write_config(served_small.config_file, {**config, **change})

    response = served_small.admin_reload()

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_configuration"
    assert named in error["message"]
    after = ask(client)
    assert after["x-rightsize-model"] == "small"
    assert after["x-rightsize-config"] == before["x-rightsize-config"]


def test_a_stream_started_before_a_reload_finishes_on_the_old_snapshot(
    served_small: Served, client: openai.OpenAI, upstream: RunningUpstream
) -> None:
    old = ask(client)
    raw = client.chat.completions.with_raw_response.create(
        model="direct-held", messages=MESSAGES, stream=True
    )
    stream = raw.parse()
    chunks = iter(stream)
    first = next(chunks)
    assert upstream.fake.held_started.wait(30)
    write_config(
        served_small.config_file, reload_config(served_small.store_url, upstream, light="direct")
    )
    response = served_small.admin_reload()
    assert response.status_code == 200, response.text
    new_hash = response.json()["config_hash"]
    assert ask(client)["x-rightsize-config"] == new_hash  # served meanwhile on the new one

    upstream.fake.release_held.set()
    text = "".join(c.choices[0].delta.content or "" for c in [first, *chunks] if c.choices)

    assert text == ANSWER
    assert raw.headers["x-rightsize-config"] == old["x-rightsize-config"] != new_hash
    row = live_spend_row(served_small.live, raw.headers["x-request-id"])
    assert row["config_hash"] == old["x-rightsize-config"]


def test_sighup_reloads_a_served_gateway(
    served_small: Served, client: openai.OpenAI, upstream: RunningUpstream
) -> None:
    assert ask(client)["x-rightsize-model"] == "small"
    write_config(
        served_small.config_file, reload_config(served_small.store_url, upstream, light="direct")
    )

    served_small.live.process.send_signal(signal.SIGHUP)

    deadline = time.monotonic() + 60
    while ask(client)["x-rightsize-model"] != "direct":
        assert time.monotonic() < deadline, served_small.live.log.read_text()[-3000:]
        time.sleep(0.1)
    assert served_small.live.process.poll() is None
    assert "SIGHUP: reloading" in served_small.live.log.read_text()


async def test_the_old_router_is_closed_once_its_last_request_ends(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    artifact_a = tmp_path / "artifact-a"
    shutil.copytree(default_artifact_dir(), artifact_a)
    artifact_b = tmp_path / "artifact-b"
    shutil.copytree(artifact_a, artifact_b)
    (artifact_b / "RETUNED.md").write_text("a retuned copy: another artifact id\n")
    config = reload_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream, light="small")
    config_file = write_config(
        tmp_path / "rightsize.yaml", {**config, "router": {"artifact": str(artifact_a)}}
    )
    env = gateway_env()
    settings, source = load_settings(config_file, env)
    app = create_app(settings, environ=env, source=source, config_file=config_file)
    upstream.fake.release_held.clear()
    upstream.fake.held_started.clear()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            admin = Admin(http)
            await admin.team(f"reload-close-{os.getpid()}")
            key = (await admin.key(f"reload-close-{os.getpid()}"))["key"]
            old = app.state.gateway
            body = {"model": "direct-held", "messages": MESSAGES, "stream": True}
            held = asyncio.create_task(
                http.post(
                    "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
                )
            )
            assert await asyncio.to_thread(upstream.fake.held_started.wait, 30)
            write_config(config_file, {**config, "router": {"artifact": str(artifact_b)}})

            reloaded = await http.post("/admin/reload", headers=ADMIN)

            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["changed"] == ["router", "router_artifact"]
            new = app.state.gateway
            assert new.router is not old.router
            assert old.estimator is not None and not old.estimator.closed  # still held
            upstream.fake.release_held.set()
            response = await held
            assert response.status_code == 200
            assert response.headers["x-rightsize-router-artifact"] == old.router.artifact_id
            deadline = time.monotonic() + 30
            while not old.estimator.closed:
                assert time.monotonic() < deadline, "the retired router's batcher stayed open"
                await asyncio.sleep(0.01)
            assert new.estimator is not None and not new.estimator.closed
    assert new.estimator.closed  # and the one in force at shutdown


# `serve --workers 2`: router off and the direct transport only (what is under test is the
# process model); `light` is served by `direct` or by `direct-cached`.


def workers_config(base: dict[str, Any], *, light: str) -> dict[str, Any]:
    tiers = {"direct": "standard", "direct-cached": "standard", light: "light"}
    models = [dict(m, tier=tiers.get(m["name"])) for m in base["models"]]
    return {**base, "models": models}


class Workers:
    """A `serve --workers 2` process, its worker pids, a key, and its configuration file."""

    def __init__(self, server: Serve, base: dict[str, Any], config_file: Path) -> None:
        self.server = server
        self.base = base
        self.config_file = config_file
        self.pids = sorted(server.wait_workers(2))
        self.asked = 0
        with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=60) as admin:
            team = f"reload-workers-{os.getpid()}-{time.monotonic_ns()}"
            assert admin.post("/admin/teams", json={"name": team}).status_code == 201
            self.key = admin.post("/admin/keys", json={"team": team}).json()["key"]

    def ask(self, model: str = "light") -> httpx.Response:
        """One request on a connection of its own (any worker may accept it); a prompt of its
        own, so that no answer comes from the cache."""
        self.asked += 1
        body = {"model": model, "messages": [{"role": "user", "content": f"Hi #{self.asked}"}]}
        response = httpx.post(
            self.server.base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {self.key}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response

    def write(self, light: str) -> None:
        write_config(self.config_file, workers_config(self.base, light=light))

    def reloaded_to(self, config: str) -> set[int]:
        """The workers whose log says they reloaded to `config` (the log lines carry the pid)."""
        pattern = rf"rightsize\.reload \[(\d+)\]: reload \([^)]*\): config \S+ -> {config},"
        return {int(pid) for pid in re.findall(pattern, self.server.output())}

    def wait_all_reloaded(self, light: str) -> str:
        """Until every worker logged its reload and answers by the new policy; the new hash."""
        deadline = time.monotonic() + 120
        config, consecutive = None, 0
        while consecutive < 20 or (config and self.reloaded_to(config) != set(self.pids)):
            assert time.monotonic() < deadline, self.server.output()[-4000:]
            response = self.ask()
            fresh = response.headers["x-rightsize-model"] == light
            if fresh:
                config = response.headers["x-rightsize-config"]
            consecutive = consecutive + 1 if fresh else 0
        assert config is not None
        return config

    def assert_not_restarted(self) -> None:
        output = self.server.output()
        started = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", output)]
        assert sorted(started) == self.pids, output[-4000:]  # no worker started since
        assert all(Path(f"/proc/{pid}").exists() for pid in self.pids)
        assert "restarting processes" not in output  # uvicorn's own SIGHUP handling


@pytest.fixture(scope="module")
def workers(
    upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    directory = tmp_path_factory.mktemp("reload-workers")
    base = gateway_config(f"sqlite:///{directory / 'rightsize.db'}", upstream)
    held = dict(base["models"][1], name="direct-held", model="openai/fake-held", tier=None)
    models = [m for m in base["models"] if m["transport"] == "openai_http"] + [held]
    base = {**base, "models": models, "router": {"enabled": False}}
    config_file = write_config(directory / "rightsize.yaml", workers_config(base, light="direct"))
    server = Serve(config_file, workers=2)
    try:
        yield Workers(server, base, config_file)
    finally:
        server.stop()


def test_sighup_to_the_supervisor_hot_reloads_every_worker_without_a_restart(
    workers: Workers, upstream: RunningUpstream
) -> None:
    before = workers.ask()
    upstream.fake.release_held.clear()
    upstream.fake.held_started.clear()
    client = openai.OpenAI(
        base_url=workers.server.base_url + "/v1", api_key=workers.key, max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model="direct-held", messages=MESSAGES, stream=True
    )
    chunks = iter(raw.parse())
    first = next(chunks)
    assert upstream.fake.held_started.wait(30)
    light = "direct-cached" if before.headers["x-rightsize-model"] == "direct" else "direct"
    workers.write(light)

    workers.server.process.send_signal(signal.SIGHUP)

    config = workers.wait_all_reloaded(light)
    assert config != before.headers["x-rightsize-config"]
    assert workers.reloaded_to(config) == set(workers.pids)
    assert "SIGHUP: asking 2 worker(s) to reload" in workers.server.output()
    # The stream that began before the reload ends on its snapshot, in a worker still running.
    upstream.fake.release_held.set()
    text = "".join(c.choices[0].delta.content or "" for c in [first, *chunks] if c.choices)
    assert text == ANSWER
    assert raw.headers["x-rightsize-config"] == before.headers["x-rightsize-config"]
    workers.assert_not_restarted()


def test_reload_endpoint_on_one_worker_reloads_the_others_through_the_supervisor(
    workers: Workers,
) -> None:
    before = workers.ask()
    light = "direct-cached" if before.headers["x-rightsize-model"] == "direct" else "direct"
    workers.write(light)

    response = httpx.post(workers.server.base_url + "/admin/reload", headers=ADMIN, timeout=60)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["other_workers_asked"] == 1
    assert body["previous"]["config_hash"] == before.headers["x-rightsize-config"]
    assert workers.wait_all_reloaded(light) == body["config_hash"]
    assert workers.reloaded_to(body["config_hash"]) == set(workers.pids)
    workers.assert_not_restarted()


# What a serving process does from its first line to its app's start (`serve`, a worker's
# factory), with a SIGHUP in between: the process lives on and reloads once the app serves.
EARLY_SIGHUP = """\
import asyncio, os, signal, sys, time
from gateway.app import create_app
from gateway.settings import load_settings
from gateway.workers import PendingReload

pending = PendingReload()
pending.install()
os.kill(os.getpid(), signal.SIGHUP)
settings, source = load_settings(sys.argv[1])
app = create_app(
    settings, source=source, drain_on_sigterm=True, config_file=sys.argv[1], pending_reload=pending
)

async def main():
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 60
        while app.state.snapshots.reloads == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print("reloads:", app.state.snapshots.reloads)

asyncio.run(main())
"""


def test_a_sighup_during_the_start_is_a_reload_once_the_app_serves(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = gateway_config(
        f"sqlite:///{tmp_path / 'rightsize.db'}", upstream, router={"enabled": False}
    )
    config_file = write_config(tmp_path / "rightsize.yaml", config)

    result = subprocess.run(
        [sys.executable, "-c", EARLY_SIGHUP, str(config_file)],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stderr[-4000:]  # not ended by the signal
    assert "reloads: 1" in result.stdout, result.stdout + result.stderr[-4000:]
