"""Hot reload: a new configuration file or router artifact taken up without a restart.

A reload builds a new `Gateway` snapshot (catalog, policy, router and its batcher, config hash,
parameter table, local cost meter, stickiness tiers) that shares the store, ledger, cache, spend
writer and providers with the running one, and swaps it in with one assignment. Each request
takes the snapshot in force when it arrives (`SnapshotMiddleware`) and keeps it to its end, its
stream included: a reload is atomic per request, and requests in flight finish on the old one.
A retired router's batcher is closed once the last request holding it has finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.fingerprint import config_hash
from gateway.latency import latency_watch, objectives
from gateway.llm import model_info
from gateway.local_cost import LocalCostMeter
from gateway.params import ParamTable
from gateway.settings import ConfigError, Settings, build_catalog, load_settings
from gateway.state import SNAPSHOT_SCOPE_KEY, Gateway, resolve_api_keys
from gateway.stickiness import Stickiness
from policies import Catalog, PolicyEngine
from router import EstimateBatcher, Router
from router.artifact import artifact_id, default_artifact_dir

log = logging.getLogger("rightsize.reload")

# Sections whose objects live as long as the process (pools, clients, the cache's index):
# a reload that changes one is refused, naming it; a restart takes it up.
RESTART_SECTIONS = (
    "server",
    "store",
    "auth",
    "spend_log",
    "cache",
    "ledger",
    "local_backend",
    "batches",
)
# What a reload replaces, reported in its answer when they changed.
RELOADED_SECTIONS = ("models", "policy", "routing", "router")


class ReloadFailed(GatewayError):
    """400: the new configuration or artifact did not load; the running one is untouched."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_configuration"


@dataclass(frozen=True, slots=True)
class Routing:
    """The parts of a snapshot that the configuration and the router artifact decide."""

    catalog: Catalog
    policy: PolicyEngine
    default: str | None
    router: Router | None
    config_hash: str


def load_router(settings: Settings) -> Router | None:
    """The router, loaded before serving so that a broken artifact fails the start."""
    if not settings.router.enabled:
        log.warning("router disabled: auto routes to the default tier, no demand headers")
        return None
    try:
        return Router.load(settings.router.artifact, runtime=settings.router.runtime)
    except Exception as exc:
        raise ConfigError(f"router: cannot load the router artifact: {exc}") from exc


def build_routing(
    settings: Settings, catalog: Catalog, router: Router | None
) -> tuple[PolicyEngine, str | None, str]:
    """The policy engine, `auto`'s default and the config hash recorded on each routed row."""
    default = settings.default_route(catalog)
    policy = PolicyEngine(catalog, settings.policy, default)
    engines = any(d.engine is not None for d in catalog.deployments)
    routing_config = config_hash(
        catalog,
        policy.spec,
        default,
        settings.router,
        settings.routing.stickiness,
        settings.local_backend if engines else None,
    )
    return policy, default, routing_config


def new_batcher(settings: Settings, router: Router | None) -> EstimateBatcher | None:
    if router is None:
        return None
    return EstimateBatcher(
        router,
        max_batch_size=settings.router.max_batch_size,
        max_wait_s=settings.router.max_wait_ms / 1000,
        inline_max_chars=settings.router.inline_max_chars,
    )


@dataclass(eq=False, slots=True)
class _Held:
    """One snapshot and the requests that hold it."""

    gateway: Gateway
    requests: int = 0
    retired: bool = False


@dataclass(frozen=True, slots=True)
class ReloadResult:
    config_hash: str | None
    router_artifact: str | None
    previous_config_hash: str | None
    previous_router_artifact: str | None
    changed: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "router_artifact": self.router_artifact,
            "previous": {
                "config_hash": self.previous_config_hash,
                "router_artifact": self.previous_router_artifact,
            },
            "changed": self.changed,
        }


class Snapshots:
    """The snapshot in force, the ones requests still hold, and the reload that swaps them."""

    def __init__(
        self,
        app_state: Any,
        gateway: Gateway,
        *,
        config_file: str | Path | None,
        source: str,
        environ: Mapping[str, str],
        api_keys: MutableMapping[str, str],
    ) -> None:
        self._state = app_state  # app.state: its `gateway` follows the snapshot in force
        self._current = _Held(gateway)
        self._config_file = config_file
        self._source = source
        self._env = environ
        # The very mapping the providers read: names a reload adds are added to it.
        self._api_keys = api_keys
        self._lock = asyncio.Lock()
        self._retired: list[_Held] = []
        self._closing: set[asyncio.Task[None]] = set()
        # The batchers this app built (at start and by reloads), closed by it and by nobody else.
        self._owned: dict[int, EstimateBatcher] = {}
        if gateway.estimator is not None:
            self._owned[id(gateway.estimator)] = gateway.estimator
        self.reloads = 0
        # The artifact's files (path, size, mtime) when last hashed, and that hash: hashing its
        # megabytes on every reload would cost the requests in flight CPU for nothing.
        self._artifact_stamp: tuple[tuple[str, int, int], ...] | None = None
        self._artifact_stamp_id: str | None = None

    @property
    def current(self) -> Gateway:
        return self._current.gateway

    def enter(self) -> _Held:
        held = self._current
        held.requests += 1
        return held

    def leave(self, held: _Held) -> None:
        held.requests -= 1
        if held.retired and held.requests == 0:
            self._retired.remove(held)
            self._close_unused(held.gateway.estimator)

    async def reload(self, reason: str) -> ReloadResult:
        """Re-read the configuration file and the router artifact, then swap the snapshot."""
        async with self._lock:
            old = self._current.gateway
            try:
                new, changed = await self._build(old)
            except ConfigError as exc:
                log.warning("reload (%s) refused, the running configuration stays: %s", reason, exc)
                raise ReloadFailed(str(exc)) from None
            except Exception as exc:  # whatever failed, nothing was swapped in
                log.exception("reload (%s) failed, the running configuration stays", reason)
                raise ReloadFailed(f"the reload failed: {type(exc).__name__}: {exc}") from None
            retired = self._current
            self._current = _Held(new)
            self._state.gateway = new
            self.reloads += 1
            retired.retired = True
            if retired.requests > 0:
                self._retired.append(retired)
            else:
                self._close_unused(retired.gateway.estimator)
            result = ReloadResult(
                config_hash=new.config_hash,
                router_artifact=_artifact(new),
                previous_config_hash=old.config_hash,
                previous_router_artifact=_artifact(old),
                changed=changed,
            )
            log.info(
                "reload (%s): config %s -> %s, router artifact %s -> %s, changed: %s",
                reason,
                old.config_hash,
                new.config_hash,
                _artifact(old),
                _artifact(new),
                ", ".join(changed) or "nothing",
            )
            return result

    def reload_soon(self, reason: str) -> None:
        """For a signal handler: reload in a task; a failure is logged, not raised."""

        async def run() -> None:
            try:
                await self.reload(reason)
            except ReloadFailed:
                pass  # logged by reload()
            except Exception:
                log.exception("reload (%s) failed", reason)

        task = asyncio.get_running_loop().create_task(run())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """At shutdown: every batcher still open, the current one's included."""
        for task in list(self._closing):
            await asyncio.gather(task, return_exceptions=True)
        for estimator in self._owned.values():
            if not estimator.closed:
                await estimator.aclose()
        self._owned.clear()
        self._retired.clear()

    def _close_unused(self, estimator: EstimateBatcher | None) -> None:
        """Close a retired snapshot's batcher once neither the snapshot in force nor any request
        in flight holds it (a reload that kept the artifact hands the same batcher on)."""
        if estimator is None or id(estimator) not in self._owned:
            return
        if estimator is self._current.gateway.estimator:
            return
        if any(held.gateway.estimator is estimator for held in self._retired):
            return
        del self._owned[id(estimator)]
        log.info("a retired router's last request ended: its batcher is closed")
        task = asyncio.get_running_loop().create_task(estimator.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _build(self, old: Gateway) -> tuple[Gateway, list[str]]:
        if self._config_file is None and self._source != "built-in defaults":
            raise ConfigError(
                "this gateway's configuration was given in code, not read from a file: "
                "there is nothing to reload"
            )
        # Off the event loop: the file, its validation and the catalog's model lookups.
        settings, source = await asyncio.to_thread(load_settings, self._config_file, self._env)
        _refuse_restart_changes(old.settings, settings)
        catalog = await asyncio.to_thread(build_catalog, settings, model_info, source)
        keys = self._new_api_keys(catalog)
        _refuse_new_transports(old, catalog)
        router, estimator = await self._router(old, settings)
        try:
            policy, _, routing_config = build_routing(settings, catalog, router)
        except ValueError as exc:
            if estimator is not old.estimator and estimator is not None:
                await estimator.aclose()
            raise ConfigError(f"policy: {exc}") from exc
        if estimator is not None and estimator is not old.estimator:
            self._owned[id(estimator)] = estimator
        # Nothing fails past this point: the keys the new deployments read join the providers'.
        self._api_keys.update(keys)
        same_models = old.catalog.deployments == catalog.deployments
        stickiness = old.stickiness
        if tuple(policy.tiers) != tuple(old.policy.tiers):
            stickiness = Stickiness(settings.routing.stickiness, old.stickiness.store, policy.tiers)
        # The measurements go on while the objectives stay; new objectives start afresh.
        latency = old.latency
        if old.latency is None or objectives(old.policy) != objectives(policy):
            latency = latency_watch(policy)
        new = dataclasses.replace(
            old,
            latency=latency,
            settings=settings,
            catalog=catalog,
            policy=policy,
            router=router,
            estimator=estimator,
            config_hash=routing_config,
            params=old.params if same_models else ParamTable(deployments=catalog.deployments),
            local_cost=old.local_cost if same_models else LocalCostMeter(catalog),
            stickiness=stickiness,
        )
        changed = [
            name
            for name in RELOADED_SECTIONS
            if getattr(old.settings, name) != getattr(settings, name)
        ]
        if _artifact(old) != _artifact(new):
            changed.append("router_artifact")
        return new, changed

    def _new_api_keys(self, catalog: Catalog) -> dict[str, str]:
        """Keys of the new deployments; a key the providers' redactor does not know yet (a new
        or changed secret) needs a restart."""
        keys = resolve_api_keys(catalog, self._env)
        known = set(self._api_keys.values())
        for name, value in keys.items():
            if self._api_keys.get(name, value) != value or value not in known:
                raise ConfigError(
                    f"models: {name!r} reads a key this process did not start with: restart "
                    "the gateway to take up a new or changed secret"
                )
        return {n: v for n, v in keys.items() if n not in self._api_keys}

    async def _router(
        self, old: Gateway, settings: Settings
    ) -> tuple[Router | None, EstimateBatcher | None]:
        """The running router when its artifact's bytes and settings are unchanged, else the
        new one loaded in a thread (the event loop keeps serving meanwhile)."""
        if settings.router.enabled != (old.router is not None):
            raise ConfigError("router.enabled: switching the router on or off needs a restart")
        if old.router is None:
            return None, None
        directory = Path(settings.router.artifact or default_artifact_dir())
        try:
            stamp = await asyncio.to_thread(_stamp, directory)
            if stamp == self._artifact_stamp and self._artifact_stamp_id is not None:
                new_id = self._artifact_stamp_id  # no file of it changed since it was hashed
            else:
                new_id = await asyncio.to_thread(artifact_id, directory)
        except OSError as exc:
            raise ConfigError(f"router: cannot read the router artifact: {exc}") from exc
        self._artifact_stamp, self._artifact_stamp_id = stamp, new_id
        if new_id == old.router.artifact_id and settings.router == old.settings.router:
            return old.router, old.estimator
        router = await asyncio.to_thread(load_router, settings)
        assert router is not None
        if router.encoder.dim != old.router.encoder.dim:
            raise ConfigError(
                f"router: the new artifact embeds in {router.encoder.dim} dimensions, the "
                f"running one (and the semantic cache) in {old.router.encoder.dim}: restart"
            )
        batcher = new_batcher(settings, router)
        assert batcher is not None
        return router, batcher


def _refuse_restart_changes(old: Settings, new: Settings) -> None:
    changed = [name for name in RESTART_SECTIONS if getattr(old, name) != getattr(new, name)]
    if old.routing.stickiness != new.routing.stickiness:
        changed.append("routing.stickiness")
    # The shadow runner's queue, workers and sampler are built at start (gateway/shadow.py).
    if old.policy.shadow != new.policy.shadow:
        changed.append("policy.shadow")
    if changed:
        raise ConfigError(
            "these sections changed and are only taken up at start: "
            + ", ".join(changed)
            + " (restart the gateway; nothing was reloaded)"
        )


def _refuse_new_transports(old: Gateway, catalog: Catalog) -> None:
    engines = {(d.name, d.engine) for d in old.catalog.deployments if d.engine is not None}
    if engines != {(d.name, d.engine) for d in catalog.deployments if d.engine is not None}:
        raise ConfigError("models: local engines (`engine`) changed: restart the gateway")
    for deployment in catalog.deployments:
        if deployment.engine is None and deployment.transport not in old.providers:
            raise ConfigError(
                f"models: {deployment.name!r} uses transport {deployment.transport!r}, which "
                "this process did not start: restart the gateway"
            )


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _artifact(gateway: Gateway) -> str | None:
    return gateway.router.artifact_id if gateway.router is not None else None


class SnapshotMiddleware:
    """Each request takes the snapshot in force once, at its start, and holds it until its
    response (stream and background task included) has been sent; every /v1 response names
    the configuration and the router artifact it was routed with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshots: Snapshots | None = getattr(scope["app"].state, "snapshots", None)
        if scope["type"] != "http" or snapshots is None:
            await self.app(scope, receive, send)
            return
        held = snapshots.enter()
        gateway = held.gateway
        scope[SNAPSHOT_SCOPE_KEY] = gateway
        if scope["path"].startswith("/v1/"):
            names = [
                (b"x-rightsize-config", (gateway.config_hash or "none").encode()),
                (b"x-rightsize-router-artifact", (_artifact(gateway) or "none").encode()),
            ]

            async def named(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *names]
                await send(message)

            send_on: Send = named
        else:
            send_on = send
        try:
            await self.app(scope, receive, send_on)
        finally:
            snapshots.leave(held)
