"""The probe loop: one task per process polls every replica's health and load, bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from local_backend.backend import LocalBackend
from local_backend.prometheus import ENGINES_WITH_METRICS, MetricsFormatError, parse_engine_load
from local_backend.replica import Replica
from policies import Deployment

log = logging.getLogger("rightsize.local_backend")

# Where each engine answers "alive": the OpenAI-compatible /v1/models where there is no other.
_HEALTH_PATH = {"vllm": "/health", "sglang": "/health", "llamacpp": "/health"}


def engine_root(url: str) -> str:
    """The server's root from an OpenAI base URL (http://host:8000/v1 -> http://host:8000)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def health_url(engine: str, url: str) -> str:
    if engine in _HEALTH_PATH:
        return engine_root(url) + _HEALTH_PATH[engine]
    if engine == "ollama":
        return engine_root(url) + "/api/version"
    return url.rstrip("/") + "/models"


class ProbeLoop:
    """Probes every replica each `probe_interval_s`, at most `max_concurrent_probes` at once."""

    def __init__(self, backend: LocalBackend, clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._settings = backend.settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(self._settings.max_concurrent_probes)
        self.rounds = 0  # completed probe rounds (tests and logs read it)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the one loop of this process; a second start is a bug, not a second loop."""
        if self._task is not None:
            raise RuntimeError("the probe loop is already started")
        self._task = asyncio.create_task(self._run(), name="rightsize-local-probes")

    async def aclose(self) -> None:
        """Cancel the loop and wait for it, then close its connections."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.probe_all()
            except Exception:  # a bug in one round must not end the probing for good
                log.exception("local backend probe round failed")
            self.rounds += 1
            await asyncio.sleep(max(self._settings.probe_interval_s - (self._clock() - started), 0))

    async def probe_all(self) -> None:
        """One round: every replica's health and load, then the spill gates."""
        jobs = [
            self._probe(deployment, replica)
            for deployment in self._backend.deployments()
            for replica in self._backend.replicas(deployment.name)
        ]
        await asyncio.gather(*jobs)
        self._backend.refresh()

    async def _probe(self, deployment: Deployment, replica: Replica) -> None:
        engine = deployment.engine or "openai"
        async with self._slots:
            healthy = await self._health(engine, replica)
            if healthy and engine in ENGINES_WITH_METRICS:
                await self._metrics(deployment, engine, replica)

    async def _health(self, engine: str, replica: Replica) -> bool:
        was = self._backend.healthy(replica)
        try:
            async with self._client().get(health_url(engine, replica.url)) as response:
                await response.read()
                ok = response.status == 200
                why = f"health probe answered {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            ok, why = False, f"health probe failed: {type(exc).__name__}"
        if ok:
            replica.probe_passed(self._clock())
        else:
            replica.probe_failed(why)
        now = self._backend.healthy(replica)
        if now != was:
            log.warning(
                "local replica %s %s (%s)",
                replica.url,
                "back in rotation" if now else "out of rotation",
                "probe passed" if now else replica.last_error,
            )
        return ok

    async def _metrics(self, deployment: Deployment, engine: str, replica: Replica) -> None:
        try:
            async with self._client().get(engine_root(replica.url) + "/metrics") as response:
                text = await response.text()
                if response.status != 200:
                    return  # the reading ages and turns stale: unknown, not idle
            load = parse_engine_load(engine, text, deployment.upstream_model)
        except (TimeoutError, aiohttp.ClientError, MetricsFormatError, ValueError) as exc:
            log.debug("no load reading from %s: %r", replica.url, exc)
            return
        replica.read(load, self._clock())

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._settings.probe_timeout_s)
            self._session = aiohttp.ClientSession(
                timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session
