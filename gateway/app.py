"""The application factory: settings in, a FastAPI app with its state out."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import threadpoolctl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from gateway import __version__
from gateway.admin import router as admin_router
from gateway.auth import KeyService, bearer_token, load_key_secret
from gateway.cache import PromptCache
from gateway.cache.config import CacheSettings
from gateway.chat import chat_completions
from gateway.errors import GatewayError, InvalidRequest
from gateway.http import error_response, json_response
from gateway.ledger.admin import router as ledger_admin_router
from gateway.ledger.build import open_ledger
from gateway.llm import model_info
from gateway.providers import LiteLLMProvider, OpenAIHTTPProvider, Provider
from gateway.settings import ConfigError, Settings, build_catalog, load_settings
from gateway.spend import SpendWriter
from gateway.state import Gateway, resolve_api_keys
from gateway.store import Store, sqlite_path
from policies import Catalog, PolicyEngine
from router import EstimateBatcher, Router

log = logging.getLogger("rightsize")


def create_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "configuration",
    catalog: Catalog | None = None,
) -> FastAPI:
    """Validate everything that can fail before serving, then build the app."""
    env = dict(os.environ if environ is None else environ)
    catalog = catalog or build_catalog(settings, model_info, source)
    api_keys = resolve_api_keys(catalog, env)
    key_secret = load_key_secret(settings, env)
    default = settings.default_route(catalog)
    policy = PolicyEngine(catalog, settings.policy, default)
    router = _load_router(settings)
    master_key = env.get(settings.auth.master_key_env) or None
    if settings.cache.backend == "redis" and not settings.store.redis_url:
        raise ConfigError(f"{source}: cache.backend: redis needs store.redis_url to be set")
    _log_configuration(settings, catalog, source, default, master_key is not None, env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.connect(settings.store_url())
        if settings.store.migrate_on_start:
            await store.migrate()
        spend = SpendWriter(
            store,
            flush_interval_s=settings.spend_log.flush_interval_ms / 1000,
            batch_size=settings.spend_log.batch_size,
            fallback_file=_fallback_file(settings),
        )
        spend.start()
        providers: dict[str, Provider] = {"openai_http": OpenAIHTTPProvider(api_keys)}
        if any(d.transport == "litellm" for d in catalog.deployments):
            providers["litellm"] = LiteLLMProvider(api_keys)
        estimator = (
            EstimateBatcher(
                router,
                max_batch_size=settings.router.max_batch_size,
                max_wait_s=settings.router.max_wait_ms / 1000,
            )
            if router is not None
            else None
        )
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
            master_key=master_key,
            cache=PromptCache.build(_cache_settings(settings, router), settings.store.redis_url),
            ledger=open_ledger(settings, store),
        )
        await app.state.gateway.cache.start()
        try:
            yield
        finally:
            if estimator is not None:
                await estimator.aclose()
            await app.state.gateway.cache.aclose()
            await spend.aclose()
            await app.state.gateway.ledger.aclose()
            for provider in providers.values():
                await provider.aclose()
            await store.aclose()

    app = FastAPI(title="Rightsize", version=__version__, lifespan=lifespan)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.include_router(admin_router)
    app.include_router(ledger_admin_router)
    _install_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the config path travels in RIGHTSIZE_CONFIG."""
    settings, source = load_settings()
    hold_blas_threads(settings)
    return create_app(settings, source=source)


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


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        key = await gateway.keys.authenticate(bearer_token(request.headers))
    except GatewayError as exc:
        return error_response(exc)
    names = gateway.policy.names()
    allowed = [n for n in names if key.may_use(n, gateway.policy.tier_of(n))]
    return json_response(
        {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "rightsize"} for n in allowed
            ],
        }
    )


async def healthz() -> Response:
    return json_response({"status": "ok", "version": __version__})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"] if p != "body") or None
        if param is None:
            message = "The body must be a JSON object sent with Content-Type: application/json"
        else:
            message = f"Invalid value for {param!r}: {error['msg']}"
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "api_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(GatewayError("Internal gateway error"))


def _load_router(settings: Settings) -> Router | None:
    """The router, loaded before serving so that a broken artifact fails the start."""
    if not settings.router.enabled:
        log.warning("router disabled: auto routes to the default tier, no demand headers")
        return None
    try:
        return Router.load(settings.router.artifact, runtime=settings.router.runtime)
    except Exception as exc:
        raise ConfigError(f"router: cannot load the router artifact: {exc}") from exc


def _cache_settings(settings: Settings, router: Router | None) -> CacheSettings:
    """The semantic tier indexes the router's own embeddings, so it takes their width."""
    if router is None:
        return settings.cache
    width = int(router.embed_batch(["dimension probe"]).shape[1])
    semantic = settings.cache.semantic.model_copy(update={"dimensions": width})
    return settings.cache.model_copy(update={"semantic": semantic})


def _fallback_file(settings: Settings) -> Path:
    path = sqlite_path(settings.store_url())
    base = path.parent if path else Path.cwd()
    return base / "spend-log-unwritten.jsonl"


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
        "rightsize %s: config from %s; store %s; models: %s; auto -> %s; admin API %s",
        __version__,
        source,
        _redact(settings.store_url()),
        models or "none",
        default or "nothing",
        "enabled" if admin else f"disabled ({settings.auth.master_key_env} not set)",
    )
    if source == "built-in defaults":
        for var, provider in (("OPENAI_API_KEY", "OpenAI"), ("ANTHROPIC_API_KEY", "Anthropic")):
            state = "enabled" if env.get(var) else f"not configured ({var} not set)"
            log.info("%s models: %s", provider, state)
    if not catalog.deployments:
        log.warning(
            "no models are configured: every request will get 404. Set OPENAI_API_KEY or "
            "ANTHROPIC_API_KEY, or pass --config with a models section"
        )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
