"""The application factory: settings in, a FastAPI app with its state out."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import threadpoolctl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy import text
from starlette.exceptions import HTTPException

from gateway import __version__, outage
from gateway.api.admin import router as admin_router
from gateway.api.admin_ui import AdminAssets, admin_ui_router
from gateway.api.batches import router as batches_router
from gateway.api.budgets import router as ledger_admin_router
from gateway.api.chat import chat_completions, parse_chat_request
from gateway.api.chat_jobs import router as chat_jobs_router
from gateway.api.embeddings import embeddings
from gateway.api.message_batches import router as message_batches_router
from gateway.api.messages import count_tokens, messages, parse_batch_params
from gateway.api.metrics import metrics as metrics_route
from gateway.api.models import list_models, retrieve_model
from gateway.api.unknown import not_served
from gateway.auth import KeyService, load_key_secret
from gateway.batches import BatchWorker, ProviderBatches
from gateway.batches.worker import MESSAGES_ENDPOINT
from gateway.cache import PromptCache
from gateway.cache.config import CacheSettings
from gateway.errors import RETRY_AFTER_S, GatewayError, InvalidRequest, from_ledger
from gateway.http import error_response, json_response
from gateway.latency import latency_watch
from gateway.ledger_build import open_ledger
from gateway.llm import model_info
from gateway.local_cost import LocalCostMeter
from gateway.metrics import Metrics
from gateway.openapi import (
    BATCH_RESPONSES,
    CHAT_OPENAPI_EXTRA,
    CHAT_RESPONSES,
    COUNT_TOKENS_OPENAPI_EXTRA,
    COUNT_TOKENS_RESPONSES,
    EMBEDDINGS_OPENAPI_EXTRA,
    EMBEDDINGS_RESPONSES,
    MESSAGE_BATCH_RESPONSES,
    MESSAGES_OPENAPI_EXTRA,
    MESSAGES_RESPONSES,
    MODEL_RESPONSES,
    DocumentedRoute,
    install_openapi,
)
from gateway.params import ParamTable
from gateway.providers import (
    AnthropicHTTPProvider,
    LiteLLMProvider,
    LocalProvider,
    OpenAIHTTPProvider,
    Provider,
)
from gateway.reload import SnapshotMiddleware, Snapshots, build_routing, load_router, new_batcher
from gateway.scrub import Redactor, redact_logs
from gateway.settings import CONFIG_ENV, ConfigError, Settings, build_catalog, load_settings
from gateway.shadow import ShadowRunner
from gateway.shutdown import Drain
from gateway.spend import (
    WRITER_CONNECTIONS,
    SpendWriter,
    default_fallback_file,
    default_journal_dir,
)
from gateway.state import Gateway, gateway_of, resolve_api_keys
from gateway.stickiness import Stickiness
from gateway.store import Store
from gateway.timeouts import with_client_timeouts
from gateway.tracing import Tracing
from gateway.upstreams import check_reachability
from ledger.errors import LedgerError
from local_backend import LocalBackend, ProbeLoop
from policies import Catalog
from router import Router

if TYPE_CHECKING:
    from gateway.workers import PendingReload, SupervisorLink

log = logging.getLogger("rightsize")
_READY_TIMEOUT_S = 2.0  # a readiness probe answers within this, whatever the dependencies do


def create_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "configuration",
    catalog: Catalog | None = None,
    freeze_gc: bool = False,
    tracer_provider: Any = None,
    drain_on_sigterm: bool = False,
    config_file: str | Path | None = None,
    supervisor: SupervisorLink | None = None,
    pending_reload: PendingReload | None = None,
) -> FastAPI:
    """Validate everything that can fail before serving, then build the app. `rightsize serve`
    sets `freeze_gc` (what start-up built moves out of the collector's reach) and
    `drain_on_sigterm` (SIGTERM drains for server.drain_s first: gateway/shutdown.py);
    `tracer_provider` (an OpenTelemetry SDK provider) replaces the one the OTEL_* variables
    would build. `config_file` is what POST /admin/reload and SIGHUP re-read
    (gateway/reload.py); `rightsize serve` also reloads on SIGHUP when it sets
    `drain_on_sigterm`, then once more if `pending_reload` noted a SIGHUP during the start.
    `supervisor`: a worker's `serve --workers N` supervisor, asked by POST /admin/reload to
    reload the other workers (gateway/workers.py)."""
    env = dict(os.environ if environ is None else environ)
    catalog = catalog or build_catalog(settings, model_info, source)
    api_keys = resolve_api_keys(catalog, env)
    key_secret = load_key_secret(settings, env)
    router = load_router(settings)
    # Recorded on every routed spend row: which configuration made the decision.
    policy, default, routing_config = build_routing(settings, catalog, router)
    engines = any(d.engine is not None for d in catalog.deployments)
    master_key = env.get(settings.auth.master_key_env) or None
    metrics_key = env.get(settings.auth.metrics_key_env) or None
    # Upstream error text reaches tenants and the log: every secret this app holds is cut.
    redactor = Redactor([*api_keys.values(), master_key, key_secret, metrics_key])
    redact_logs(redactor)
    if settings.cache.backend == "redis" and not settings.store.redis_url:
        raise ConfigError(f"{source}: cache.backend: redis needs store.redis_url to be set")
    _log_configuration(settings, catalog, source, default, master_key is not None, env)
    # Built here, once per app: in one process its series live in this app's own registry.
    metrics = Metrics.from_environment() if settings.server.metrics else None
    record_prompts = settings.server.trace_prompts
    tracing = (
        Tracing(tracer_provider, record_prompts=record_prompts)
        if tracer_provider is not None
        else Tracing.from_environ(env, record_prompts=record_prompts)
    )
    log.info(
        "spend rows record routing configuration %s and router artifact %s",
        routing_config,
        router.artifact_id if router is not None else "none (router disabled)",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.connect(settings.store_url(), settings.store.pool())
        # Refused here, before serving: a schema this release does not know (or, without
        # migrating, one it has not reached yet: `rightsize migrate` runs first).
        if settings.store.migrate_on_start:
            await store.migrate()
        else:
            await store.check_schema()
        # The writer's own engine, used only on its own thread's loop (an engine's connections
        # belong to one loop); one connection is enough for one batch at a time.
        spend_pool = dataclasses.replace(settings.store.pool(), size=WRITER_CONNECTIONS, overflow=0)
        spend = SpendWriter(
            lambda: Store.connect(settings.store_url(), spend_pool),
            flush_interval_s=settings.spend_log.flush_interval_ms / 1000,
            batch_size=settings.spend_log.batch_size,
            fallback_file=_fallback_file(settings),
            journal_dir=_journal_dir(settings),
            replay_interval_s=settings.spend_log.replay_interval_s,
            observer=metrics,
        )
        # Before serving: a counter rebuilt from the spend log must see the replayed rows.
        await spend.start()
        http = OpenAIHTTPProvider(api_keys, redactor=redactor)
        providers: dict[str, Provider] = {"openai_http": http}
        # Models with an `engine`: probed by one loop in this process, stopped at shutdown.
        local, probes = None, None
        if engines:
            local = LocalBackend(catalog.deployments, settings.local_backend)
            probes = ProbeLoop(local)
            providers["local"] = LocalProvider(local, http)
        if any(d.transport in ("litellm", "anthropic") for d in catalog.deployments):
            providers["litellm"] = LiteLLMProvider(api_keys, redactor=redactor)
        # Anthropic-format deployments take /v1/messages requests as they are; their chat
        # completions go through litellm's translation.
        anthropic = AnthropicHTTPProvider(
            api_keys, openai=providers.get("litellm"), redactor=redactor
        )
        providers["anthropic"] = anthropic
        estimator = new_batcher(settings, router)
        app.state.gateway = Gateway(
            settings=settings,
            catalog=catalog,
            policy=policy,
            estimator=estimator,
            router=router,
            store=store,
            keys=KeyService(store, key_secret),
            spend=spend,
            providers=providers,
            natives={"anthropic": anthropic},
            master_key=master_key,
            cache=PromptCache.build(
                _cache_settings(settings, router), settings.store.redis_url, observer=metrics
            ),
            ledger=open_ledger(settings, store),
            stickiness=Stickiness.build(
                settings.routing.stickiness, settings.store.redis_url, policy.tiers
            ),
            config_hash=routing_config,
            metrics=metrics,
            metrics_key=metrics_key,
            log_requests=settings.server.log_format == "json",
            local=local,
            local_cost=LocalCostMeter(catalog),
            params=ParamTable(deployments=catalog.deployments),
            tracing=tracing,
            latency=latency_watch(policy),
        )
        # A counter rebuilt from the spend log (after Redis lost it) counts this process's rows
        # still queued in the writer; other processes' queued rows are at most one batch
        # interval each (docs/budgets.md).
        app.state.gateway.ledger.before_rebuild = spend.flush
        # The snapshot each request takes at its start; a reload swaps it (gateway/reload.py).
        snapshots = Snapshots(
            app.state,
            app.state.gateway,
            config_file=config_file,
            source=source,
            environ=env,
            api_keys=api_keys,
        )
        app.state.snapshots = snapshots
        await app.state.gateway.cache.start()
        shadow = ShadowRunner(settings.policy.shadow, observer=metrics)
        if shadow.active:
            shadow.start(app.state.gateway)
            app.state.gateway.shadow = shadow
        # Heartbeat, retried settlements, release of dead processes' holds; stopped (and this
        # process's heartbeat retired) by ledger.aclose() below.
        app.state.gateway.ledger.start()
        if probes is not None:
            probes.start()
        app.state.probes = probes
        # Batches (docs/batches.md): driven from the database by whichever process leases one.
        batch_worker = BatchWorker(
            lambda: app.state.gateway,  # the snapshot in force: a reload's policy routes lines
            ProviderBatches(api_keys, redactor=redactor),
            settings.batches,
            parse_chat_request,
            {MESSAGES_ENDPOINT: parse_batch_params},  # Anthropic's Message Batches
        )
        batch_worker.start()
        app.state.batch_worker = batch_worker
        if freeze_gc:
            freeze_startup_objects()
        # In the background: an upstream that is down is worth a warning, not a failed start
        # (it may come up later, and the other models serve meanwhile).
        reachability = asyncio.create_task(check_reachability(catalog.deployments))
        if drain_on_sigterm:
            app.state.drain.install()  # uvicorn's own handler is in place by now
            sighup = _reload_on_sighup(snapshots)
            if sighup and pending_reload is not None and pending_reload.asked:
                log.info("SIGHUP during the start: reloading now that the app serves")
                snapshots.reload_soon("SIGHUP during the start")
        else:
            sighup = False
        try:
            yield
        finally:
            await batch_worker.aclose()
            if sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
                # Not the default action (the process's end) while the spend log flushes: a
                # supervisor passes every SIGHUP on to its workers, stopping ones included.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if probes is not None:
                await probes.aclose()
            await shadow.aclose()  # jobs still queued are dropped: their holds were not taken
            reachability.cancel()
            await snapshots.aclose()  # the batchers of the router in force and of retired ones
            await app.state.gateway.cache.aclose()
            await app.state.gateway.stickiness.aclose()
            await spend.aclose()
            await app.state.gateway.ledger.aclose()
            for provider in providers.values():
                await provider.aclose()
            await store.aclose()
            if metrics is not None:
                metrics.process_ended()
            if tracing is not None and tracer_provider is None:
                tracing.shutdown()  # flushes the spans still batched

    # The API description is public knowledge only where the operator says so.
    spec = settings.server.openapi
    app = FastAPI(
        title="Rightsize",
        version=__version__,
        lifespan=with_client_timeouts(lifespan, settings.server),
        openapi_url="/openapi.json" if spec else None,
        docs_url="/docs" if spec else None,
        redoc_url="/redoc" if spec else None,
    )
    app.state.drain = Drain(settings.server.drain_s)
    app.state.supervisor = supervisor
    install_openapi(app)
    app.add_middleware(SnapshotMiddleware)
    # The hot route: plain Starlette, described in the document all the same.
    app.router.routes.append(
        DocumentedRoute(
            "/v1/chat/completions",
            chat_completions,
            methods=["POST"],
            responses=CHAT_RESPONSES,
            openapi_extra=CHAT_OPENAPI_EXTRA,
        )
    )
    # Anthropic's Messages API on the same pipeline (gateway/api/messages.py).
    app.router.routes.append(
        DocumentedRoute(
            "/v1/messages",
            messages,
            methods=["POST"],
            responses=MESSAGES_RESPONSES,
            openapi_extra=MESSAGES_OPENAPI_EXTRA,
        )
    )
    app.router.routes.append(
        DocumentedRoute(
            "/v1/messages/count_tokens",
            count_tokens,
            methods=["POST"],
            responses=COUNT_TOKENS_RESPONSES,
            openapi_extra=COUNT_TOKENS_OPENAPI_EXTRA,
        )
    )
    app.router.routes.append(
        DocumentedRoute(
            "/v1/embeddings",
            embeddings,
            methods=["POST"],
            responses=EMBEDDINGS_RESPONSES,
            openapi_extra=EMBEDDINGS_OPENAPI_EXTRA,
        )
    )
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    # `:path`: a configured model's name may hold a slash (e.g. meta-llama/Llama-3.1-8B).
    app.add_api_route(
        "/v1/models/{model_id:path}", retrieve_model, methods=["GET"], responses=MODEL_RESPONSES
    )
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    if metrics is not None:
        app.add_api_route("/metrics", metrics_route, methods=["GET"], include_in_schema=False)
    app.include_router(batches_router, responses=BATCH_RESPONSES)
    app.include_router(chat_jobs_router, responses=BATCH_RESPONSES)
    app.include_router(message_batches_router, responses=MESSAGE_BATCH_RESPONSES)
    app.include_router(admin_router)
    app.include_router(ledger_admin_router)
    app.include_router(admin_ui_router(AdminAssets.load()))
    _install_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the config path travels in RIGHTSIZE_CONFIG."""
    from gateway.workers import (
        SUPERVISOR_ENV,
        PendingReload,
        SupervisorLink,
        follow_supervisor,
        warm_up,
    )

    # First, before the slow part: a worker whose supervisor dies while it loads ends too, and
    # one that the supervisor asks to reload meanwhile does so once it serves.
    if supervisor := os.environ.get(SUPERVISOR_ENV):
        follow_supervisor(int(supervisor))
    pending_reload = PendingReload()
    pending_reload.install()
    settings, source = load_settings()
    hold_blas_threads(settings)
    app = create_app(
        settings,
        source=source,
        freeze_gc=True,
        drain_on_sigterm=True,
        config_file=os.environ.get(CONFIG_ENV),
        supervisor=SupervisorLink.from_environ(os.environ),
        pending_reload=pending_reload,
    )
    warm_up()  # uvicorn reports the worker started only after this factory has returned
    return app


def hold_blas_threads(settings: Settings) -> None:
    """Cap numpy's BLAS threads in this serving process at server.blas_threads.

    The gateway's matrix products are small (one batch of prompts against a few thousand
    rows); OpenBLAS's extra threads buy nothing there and, on a host whose cores are busy,
    wait for a core and add milliseconds to the tail (docs/benchmarks.md, gateway overhead).
    Called by `rightsize serve` only: the library and the tests keep the default.
    """
    threads = settings.server.blas_threads
    if threads is None:
        return
    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    log.info("numpy BLAS held to %d thread(s) (server.blas_threads)", threads)


# Net container allocations between two young collections (CPython's default: 700). A request
# in flight holds about 70 (its coroutines, dicts, futures), so at 32 in flight the default
# collected every tenth request and found nothing to free: the requests' objects are freed by
# their reference counts. Each such collection walked every in-flight object and moved it a
# generation up, and the older generations' collections followed (about 100 young, 10 middle
# and 1 full collection a second at 1,000 requests/s). 10,000 took 6 to 13% off rs-main's CPU
# per request at 32 in flight (docs/benchmarks.md, "The collector's threshold"); cyclic garbage
# still goes, after at most 10,000 net allocations.
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    """Collect once, then freeze what is left (imports, the router artifact, the app, the
    clients): it lives as long as the process, and frozen the collector never traverses it
    again. Unfrozen, each full collection walked every one of those objects on the event loop
    and paused every request in flight (issue 19). Then the young generation's threshold is
    raised (YOUNG_COLLECTION_THRESHOLD), the older generations' kept."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
    log.info(
        "garbage collector: %d start-up objects frozen, young collections every %d allocations",
        gc.get_freeze_count(),
        YOUNG_COLLECTION_THRESHOLD,
    )


async def healthz() -> Response:
    """Liveness: the process answers. No dependency is called (see /readyz)."""
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: Request) -> Response:
    """Readiness: the store, Redis (when configured) and the router; 503 naming what is down,
    or 503 `draining` once SIGTERM has come (the load balancer stops sending requests here)."""
    gateway = gateway_of(request)
    drain: Drain = request.app.state.drain
    if drain.draining:
        body = {"status": "draining", "down": [], "checks": {}}
        return json_response(body, status=503, headers={"connection": "close"})
    checks: dict[str, dict[str, str]] = {
        "store": await _check(_ping_store(gateway.store)),
    }
    if gateway.settings.store.redis_url:
        checks["redis"] = await _check(gateway.ledger.counters.ping())
    checks["router"] = {"status": "loaded" if gateway.router is not None else "disabled"}
    down = sorted(name for name, check in checks.items() if check["status"] == "down")
    body = {"status": "unavailable" if down else "ready", "down": down, "checks": checks}
    if down:
        return json_response(body, status=503, headers={"retry-after": str(RETRY_AFTER_S)})
    return json_response(body)


async def _ping_store(store: Store) -> None:
    async with store.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check(probe: Awaitable[None]) -> dict[str, str]:
    """One dependency's state; a probe that hangs counts as down after _READY_TIMEOUT_S."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            await probe
    except Exception as exc:
        # /readyz is unauthenticated: the class of the failure, its detail (hosts) in the log.
        log.warning("readiness check failed: %r", exc)
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "up"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(LedgerError)
    async def _ledger_error(_: Request, exc: LedgerError) -> Response:
        # The admin API reads usage from the ledger: a refusal there is answered as in /v1.
        return error_response(from_ledger(exc))

    async def _outage(_: Request, exc: Exception) -> Response:
        # The admin API and the other routes call the store directly: a dependency that is
        # down is a 503; anything else of these classes (a bad query) goes on to the 500.
        unavailable = outage.unavailable(exc)
        if unavailable is None:
            raise exc
        log.warning("%s: %r", unavailable.message, exc)
        return error_response(unavailable)

    for kind in outage.EXCEPTION_CLASSES:
        app.add_exception_handler(kind, _outage)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]  # where the value was sent, not part of its name
        param = ".".join(str(p) for p in loc) or None
        if param is None:
            message = "The body must be a JSON object sent with Content-Type: application/json"
        else:
            message = f"Invalid value for {param!r}: {error['msg']}"
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (404, 405):
            return not_served(request, exc.status_code)
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "api_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(GatewayError("Internal gateway error"))


def _reload_on_sighup(snapshots: Snapshots) -> bool:
    """SIGHUP reloads this process's configuration and router artifact (each worker its own);
    whether the handler was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False  # signals reach the main thread's loop only
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _on_sighup, snapshots)
    return True


def _on_sighup(snapshots: Snapshots) -> None:
    log.info("SIGHUP: reloading the configuration and the router artifact")
    snapshots.reload_soon("SIGHUP")


def _cache_settings(settings: Settings, router: Router | None) -> CacheSettings:
    """The semantic tier indexes the router's own embeddings, so it takes their width."""
    if router is None:
        return settings.cache
    width = int(router.embed_batch(["dimension probe"]).shape[1])
    semantic = settings.cache.semantic.model_copy(update={"dimensions": width})
    return settings.cache.model_copy(update={"semantic": semantic})


def _fallback_file(settings: Settings) -> Path:
    if settings.spend_log.fallback_file is not None:
        return settings.spend_log.fallback_file
    return default_fallback_file(settings.store_url())


def _journal_dir(settings: Settings) -> Path:
    if settings.spend_log.journal_dir is not None:
        return settings.spend_log.journal_dir
    return default_journal_dir(_fallback_file(settings), settings.store_url())


def _log_configuration(
    settings: Settings,
    catalog: Catalog,
    source: str,
    default: str | None,
    admin: bool,
    env: Mapping[str, str],
) -> None:
    models = ", ".join(
        f"{d.name} (tier {d.tier or '-'}, {d.transport}{', local' if d.local else ''})"
        for d in catalog.deployments
    )
    log.info(
        "rightsize %s: config from %s; store %s; models: %s; %s; admin API %s",
        __version__,
        source,
        _redact(settings.store_url()),
        models or "none",
        settings.describe_auto(source, default),
        "enabled" if admin else f"disabled ({settings.auth.master_key_env} not set)",
    )
    if source == "built-in defaults":
        for var, provider in (("OPENAI_API_KEY", "OpenAI"), ("ANTHROPIC_API_KEY", "Anthropic")):
            state = "enabled" if env.get(var) else f"not configured ({var} not set)"
            log.info("%s models: %s", provider, state)
    for deployment in catalog.unpriced:
        log.warning(
            "local model %r has no price: its spend is reported as unpriced, not as $0. Give it "
            "gpu_cost (usd_per_gpu_hour, gpus, expected_tokens_per_s) or price",
            deployment.name,
        )
    if not catalog.deployments:
        log.warning(
            "no models are configured: every request will get 404. Set OPENAI_API_KEY or "
            "ANTHROPIC_API_KEY, or pass --config with a models section"
        )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
