"""Configuration: one YAML file plus RIGHTSIZE_* environment overrides, validated at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from gateway.cache.config import CacheSettings
from ledger.settings import LedgerSettings
from local_backend.settings import LocalBackendSettings
from policies import (
    Catalog,
    CatalogError,
    ModelInfoLookup,
    ModelSpec,
    PolicyError,
    PolicySpec,
    validate_policy,
)
from policies.thresholds import demand_tiers, describe_tiers, load_demand_thresholds

if TYPE_CHECKING:
    # The store brings SQLAlchemy and Alembic, which `rightsize route` never needs.
    from gateway.store.store import PoolLimits

ENV_PREFIX = "RIGHTSIZE_"
CONFIG_ENV = "RIGHTSIZE_CONFIG"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Request shape, checked on the decoded body before validation: a body under the byte
    # limit can still cost seconds of CPU (100,000 messages) or break recursive code (deep
    # nesting). Each refusal is a 400 naming the limit and its setting (gateway/limits.py).
    max_messages: int = Field(default=4096, gt=0, description="Messages in one request.")
    max_message_parts: int = Field(
        default=10_000,
        gt=0,
        description="Content parts and tool calls, over all the messages of one request: each "
        "is validated as a model, which costs microseconds and holds the interpreter's lock.",
    )
    max_json_depth: int = Field(
        default=64, gt=0, description="Nesting of JSON objects and arrays in a request body."
    )
    max_tools: int = Field(default=128, gt=0, description="Tools (and functions) in one request.")
    max_tool_schema_bytes: int = Field(
        default=64 * 1024, gt=0, description="Serialized size of one tool's definition."
    )
    thread_parse_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="Bodies of at least this many bytes are decoded and validated in a worker "
        "thread, off the event loop.",
    )
    header_timeout_s: float = Field(
        default=10,
        gt=0,
        description="A client must send its request line and headers within this many seconds "
        "of connecting (or of starting a request on a kept-alive connection); else 408 and the "
        "connection is closed.",
    )
    body_timeout_s: float = Field(
        default=60,
        gt=0,
        description="A client must send the whole request body within this many seconds after "
        "its headers; else 408 and the connection is closed.",
    )
    openapi: bool = Field(
        default=False,
        description="Serve /openapi.json, /docs and /redoc (unauthenticated); off: 404.",
    )
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="Seconds an idle client connection is kept open. Longer than clients' own "
        "idle expiry (httpx under the openai and anthropic SDKs: 5 s; load balancers: about "
        "60 s), so that the client closes an idle connection first instead of reusing one the "
        "gateway is closing, and longer than the gateway's stalls under overload.",
    )
    blas_threads: int | None = Field(
        default=1,
        ge=1,
        description="Threads numpy's BLAS may use in each serving process (the router's "
        "neighbour search, the semantic cache); null leaves the library's own default "
        "(OPENBLAS_NUM_THREADS, else one per core).",
    )
    metrics: bool = Field(
        default=True,
        description="Serve Prometheus metrics at /metrics; off: 404, and nothing is counted.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a key (for a scraper on a private network). Off, it "
        "takes the master key or the scrape key (auth.metrics_key_env): it names every team "
        "and its spend, which a tenant's key must not read.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: lines for people. json: every line a JSON object, plus one line per "
        "request (ids, team, key id, models, tier, demand, cache, status, tokens, cost, "
        "overhead; never prompt text) on the rightsize.requests logger.",
    )
    trace_prompts: bool = Field(
        default=False,
        description="With OpenTelemetry traces on (OTEL_* variables), put the prompt's messages "
        "on each request's span as gen_ai.input.messages. Off: spans carry no prompt text.",
    )
    drain_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM: seconds /readyz answers 503 (draining) while the process still "
        "serves, so that the load balancer's health check or Kubernetes' readiness probe takes "
        "it out of rotation before it stops accepting; 0 stops at once (SIGINT always does).",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Then: seconds requests and streams in flight have to finish before they "
        "are cancelled (the exiting process releases their holds). Keep "
        "drain_s + shutdown_timeout_s under Kubernetes' terminationGracePeriodSeconds.",
    )
    worker_start_timeout_s: int = Field(
        default=60,
        ge=1,
        description="With several workers: seconds the supervisor waits for a worker to answer "
        "its health check before killing it. A new worker answers only once it has imported "
        "its code, which takes seconds on a busy host (uvicorn's own default, 5, crash-loops "
        "there); a started worker answers from a thread of its own at once.",
    )


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (sqlite:///FILE or postgresql://...); "
        "default: SQLite in the user's data directory.",
    )
    migrate_on_start: bool = True
    redis_url: str | None = Field(
        default=None,
        description="Redis for replicas and the scale-out mode (prompt cache, ledger counters, "
        "reservations, rate limits); default None: embedded mode.",
    )
    # PostgreSQL connections per worker process: each worker has one engine (store, budgets
    # and ledger counters share it), so a replica opens at most
    # workers x (pool_size + max_overflow). The defaults keep 4 workers at 40, well under
    # PostgreSQL's default max_connections of 100; `serve` warns when the product exceeds it.
    pool_size: int = Field(
        default=5, ge=1, description="PostgreSQL connections each worker keeps open."
    )
    max_overflow: int = Field(
        default=5,
        ge=0,
        description="Connections a worker may open beyond pool_size under load (closed again "
        "when returned).",
    )
    pool_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a free connection of its worker's pool.",
    )

    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to open a PostgreSQL connection before the request gets 503 "
        "store_unavailable (a host that drops packets).",
    )

    def pool(self) -> PoolLimits:
        """The connection pool of one worker's engine."""
        from gateway.store.store import PoolLimits

        return PoolLimits(
            self.pool_size, self.max_overflow, self.pool_timeout_s, self.connect_timeout_s
        )


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    master_key_env: str = "RIGHTSIZE_MASTER_KEY"
    key_secret_env: str = "RIGHTSIZE_KEY_SECRET"
    # A key that reads /metrics and nothing else, for the scraper's configuration (the master
    # key there would hand it the whole admin API).
    metrics_key_env: str = "RIGHTSIZE_METRICS_KEY"


class StickinessSettings(BaseModel):
    """Session stickiness: a continuing conversation is not served by a lower tier than before."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="A tier served to a conversation is its floor for this long after the last "
        "turn it served.",
    )
    max_conversations: int = Field(
        default=100_000,
        gt=0,
        description="In-process store bound (the least recently served dropped first); Redis "
        "expires its keys itself.",
    )
    key_prefix: str = Field(default="rightsize:sticky:", min_length=1)
    # As the cache's: a Redis call past it costs that request its stickiness, not a wait.
    redis_timeout_ms: float = Field(default=50.0, gt=0)


class RoutingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str | None = Field(default=None, description="Model or tier that `auto` resolves to.")
    stickiness: StickinessSettings = Field(default_factory=StickinessSettings)


class RouterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Estimate every prompt (demand, token budget).")
    artifact: str | None = Field(
        default=None, description="Trained artifact dir; default: shipped."
    )
    runtime: str | None = Field(
        default=None, description="Encoder runtime (static, onnx, sentence-transformers)."
    )
    max_batch_size: int = Field(default=64, gt=0)
    # 0: an idle encoder takes a prompt at once; prompts that arrive while it is busy are
    # batched together anyway. A positive wait trades latency for larger batches.
    max_wait_ms: float = Field(default=0.0, ge=0)
    # 256: dev prompts cut to 256 characters took 0.39-0.48 ms p50 of CPU time to estimate on
    # a busy 2-core host (a knowledge question, which also searches the neighbour bank,
    # 0.7-0.85 ms, more while other processes contend for memory); 512 characters took
    # 0.56-0.77 ms and 1,024 about 1 ms: too long to hold the event loop.
    inline_max_chars: int = Field(
        default=256,
        ge=0,
        description="A prompt up to this many characters that finds the router idle is "
        "estimated on the event loop, not handed to its thread (0: always the thread).",
    )


class SpendLogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flush_interval_ms: int = Field(default=200, gt=0)
    batch_size: int = Field(default=500, gt=0)
    # Rows the store refused, kept for the replay; null: beside the SQLite file, else in the
    # working directory named for the store (gateway.spend.default_fallback_file).
    fallback_file: Path | None = None
    # Each process's write-ahead journal; null: spend-journal/STORE/ beside the fallback file.
    journal_dir: Path | None = None
    # How often the fallback file and dead processes' journals are replayed (also at start).
    replay_interval_s: float = Field(default=30, gt=0)


class BatchSettings(BaseModel):
    """POST /v1/files and /v1/batches (docs/batches.md)."""

    model_config = ConfigDict(extra="forbid")

    poll_interval_s: float = Field(
        default=30, gt=0, description="How often the gateway polls its provider batch jobs."
    )
    lease_s: float = Field(
        default=120,
        gt=0,
        description="A batch is driven by one process at a time; another takes it over once "
        "that process has not renewed its lease for this long (a crash, a restart).",
    )
    max_file_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    max_lines: int = Field(default=50_000, gt=0, description="Lines per batch (OpenAI's limit).")
    batches_per_poll: int = Field(
        default=20, gt=0, description="Batches one process advances per poll (a bound)."
    )
    hold_open_s: float = Field(
        default=0,
        ge=0,
        description="A chat request deferred with `Prefer: respond-async` waits this long for "
        "its answer (200 inline) before the gateway answers 202 with the job.",
    )
    submit_attempts: int = Field(
        default=5,
        gt=0,
        description="Tries to submit a provider batch job before its lines fail.",
    )
    submit_backoff_s: float = Field(
        default=30,
        ge=0,
        description="Wait after the first failed submission; doubled after each further one.",
    )


class Settings(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    spend_log: SpendLogSettings = Field(default_factory=SpendLogSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    models: list[ModelSpec] = Field(default_factory=list)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)  # budgets: gateway/ledger
    # Probes, spill-over and replica picking of models with an `engine` (docs/local_backend.md).
    local_backend: LocalBackendSettings = Field(default_factory=LocalBackendSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)  # docs/batches.md
    # Where policy.tiers' thresholds came from when no file wrote them (zero-config); not a
    # configuration key.
    _thresholds_origin: str | None = PrivateAttr(default=None)

    def store_url(self) -> str:
        """The configured store URL, or SQLite in the user's data directory."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{data_dir() / 'rightsize.db'}"

    def default_route(self, catalog: Catalog) -> str | None:
        """What `auto` resolves to: the configured default, else the standard or first tier."""
        if self.routing.default:
            return self.routing.default
        tiers = [t.name for t in self.policy.tiers] or catalog.tier_names
        if "standard" in tiers:
            return "standard"
        if tiers:
            return tiers[0]
        chat = [d.name for d in catalog.deployments if not d.embedding]
        return chat[0] if chat else None

    def describe_auto(self, source: str, default: str | None) -> str:
        """What `auto` does and which thresholds are in force, for the log and `route`."""
        if not self.router.enabled:
            return f"auto -> {default or 'nothing'} (router disabled: no demand routing)"
        if not self.policy.tiers:
            return f"auto -> {default or 'nothing'} (no policy.tiers: no demand routing)"
        origin = self._thresholds_origin or f"policy.tiers of {source}"
        return f"auto -> tiers by demand: {describe_tiers(self.policy)} ({origin})"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, the line and the field."""


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir("rightsize", appauthor=False))


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, str]:
    """Read, override and validate; returns the settings and a description of their source."""
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV)
    if path:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the configuration file: {exc}") from exc
        try:
            # libyaml's loader where PyYAML has it: a hot reload parses the file while requests
            # are served (gateway/reload.py), and the pure-Python one holds the GIL ten times
            # longer.
            data = yaml.load(text, Loader=_YAML_LOADER) or {}
            tree = yaml.compose(text, Loader=_YAML_LOADER)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    else:
        source, data, tree = "built-in defaults", default_config(env), None
    overridden = _apply_env_overrides(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = [
            _locate(source, tree, overridden, err["loc"]) + f": {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    if not path:
        settings = _with_demand_tiers(settings)
    return settings, source


def _with_demand_tiers(settings: Settings) -> Settings:
    """Zero-config: the model tiers get the demand thresholds shipped beside the router
    artifact, so that `auto` routes by demand with nothing but a provider key."""
    # A configuration file is taken as written (no policy.tiers there: auto -> routing.default).
    if settings.policy.tiers or not settings.router.enabled:
        return settings
    by_tier: dict[str, list[str]] = {}
    for model in settings.models:
        if model.tier:
            by_tier.setdefault(model.tier, []).append(model.name)
    try:
        thresholds = load_demand_thresholds(settings.router.artifact)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"router: cannot read the tier thresholds: {exc!r}") from None
    if set(by_tier) - set(thresholds.min_demand):
        # A tier renamed through RIGHTSIZE_MODELS__N__TIER has no threshold; policy tiers
        # without it would make it unreachable, so the model tiers stay as they are.
        return settings
    tiers = demand_tiers(by_tier, thresholds)
    if len(tiers) < 2:
        return settings  # one tier (or none): nothing to choose between
    routed = settings.model_copy(
        update={"policy": settings.policy.model_copy(update={"tiers": tiers})}
    )
    routed._thresholds_origin = thresholds.origin
    return routed


def build_catalog(
    settings: Settings, lookup: ModelInfoLookup, source: str = "configuration"
) -> Catalog:
    """The catalog of deployments, checked against the policy; errors name file, line, field."""
    try:
        catalog = Catalog.build(settings.models, lookup)
    except CatalogError as exc:
        raise ConfigError(f"{_where(source, f'models[{exc.index}].{exc.field}')}: {exc}") from None
    default = settings.routing.default
    if default and catalog.get(default) is None and not catalog.tier(default):
        tiers = {t.name for t in settings.policy.tiers}
        if default not in tiers:
            raise ConfigError(
                f"{_where(source, 'routing.default')}: {default!r} is neither a model nor a tier"
            )
    try:
        validate_policy(settings.policy, {d.name for d in catalog.deployments}, catalog.tier_names)
    except PolicyError as exc:
        raise ConfigError(f"{_where(source, exc.field)}: {exc}") from None
    _check_embedding_models_unrouted(settings, catalog, source)
    return catalog


def _check_embedding_models_unrouted(settings: Settings, catalog: Catalog, source: str) -> None:
    """An embedding model answers /v1/embeddings by its name: no chat request may route to it."""
    embedding = {d.name for d in catalog.deployments if d.embedding}
    if settings.routing.default in embedding:
        raise ConfigError(
            f"{_where(source, 'routing.default')}: {settings.routing.default!r} is an embedding "
            "model; the default route needs a chat model or a tier"
        )
    for i, tier in enumerate(settings.policy.tiers):
        for j, name in enumerate(tier.deployments):
            if name in embedding:
                raise ConfigError(
                    f"{_where(source, f'policy.tiers[{i}].deployments[{j}]')}: {name!r} is an "
                    "embedding model and cannot serve a tier"
                )


def _where(source: str, dotted: str) -> str:
    """`file:line: field` for a dotted field path, reading the file again to find the line."""
    loc: list[int | str] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", dotted):
        loc.append(int(index) if index else name)
    tree = None
    path = Path(source)
    if path.is_file():
        try:
            tree = yaml.compose(path.read_text())
        except yaml.YAMLError:
            tree = None
    line = _line_of(tree, tuple(loc))
    return f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"


def default_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Zero-config: enable the models of whichever provider keys are in the environment."""
    models: list[dict[str, Any]] = []
    if env.get("OPENAI_API_KEY"):
        base = env.get("OPENAI_BASE_URL")
        for name, tier in (
            ("gpt-4o-mini", "light"),
            ("gpt-4o", "standard"),
            ("o4-mini", "reasoning"),
        ):
            models.append(
                {
                    "name": name,
                    "model": f"openai/{name}",
                    "api_key_env": "OPENAI_API_KEY",
                    "api_base": base,
                    "tier": tier,
                }
            )
    if env.get("ANTHROPIC_API_KEY"):
        base = env.get("ANTHROPIC_BASE_URL")
        for name, tier in (
            ("claude-haiku-4-5", "light"),
            ("claude-sonnet-4-5", "standard"),
            # Extended thinking through the policy's reasoning effort (litellm maps it).
            ("claude-opus-4-5", "reasoning"),
        ):
            models.append(
                {
                    "name": name,
                    "model": f"anthropic/{name}",
                    "api_key_env": "ANTHROPIC_API_KEY",
                    "api_base": base,
                    "tier": tier,
                }
            )
    return {"models": models}


def _apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str]
) -> dict[tuple[str, ...], str]:
    """RIGHTSIZE_SERVER__PORT=8080 sets server.port; list items by index (MODELS__0__API_BASE)."""
    sections = set(Settings.model_fields)
    overridden: dict[tuple[str, ...], str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
        if path[0] not in sections:
            continue
        try:
            value = yaml.safe_load(env[var])
        except yaml.YAMLError:
            value = env[var]
        _set_path(data, path, value, var)
        overridden[path] = var
    return overridden


def _set_path(data: Any, path: tuple[str, ...], value: Any, var: str) -> None:
    node = data
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"environment variable {var}: no list item {key!r}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"environment variable {var}: {'.'.join(path[:i])} is not a section")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _locate(
    source: str,
    tree: yaml.Node | None,
    overridden: Mapping[tuple[str, ...], str],
    loc: tuple[int | str, ...],
) -> str:
    dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    parts = tuple(str(p) for p in loc)
    for length in range(len(parts), 0, -1):
        var = overridden.get(parts[:length])
        if var:
            return f"environment variable {var}: {dotted}"
    line = _line_of(tree, loc)
    return f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"


def _line_of(tree: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    node, line = tree, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                return line  # a missing field is reported at its parent
            line = pair[0].start_mark.line + 1
            node = pair[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
