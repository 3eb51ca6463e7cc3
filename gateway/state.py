"""The gateway's runtime state, built once at start and passed explicitly to the handlers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.auth import KeyService
from gateway.cache import PromptCache
from gateway.latency import LatencyWatch
from gateway.local_cost import LocalCostMeter
from gateway.metrics import Metrics
from gateway.native import NativeProvider
from gateway.params import ParamTable
from gateway.providers import Provider
from gateway.settings import ConfigError, Settings
from gateway.shadow import ShadowRunner
from gateway.spend import SpendWriter
from gateway.stickiness import Stickiness
from gateway.store import Store
from gateway.tracing import Tracing
from ledger.ledger import Ledger
from local_backend import LocalBackend
from policies import Catalog, Deployment, PolicyEngine
from router import EstimateBatcher, Router

# Where gateway/reload.py's middleware puts the snapshot a request took at its start.
SNAPSHOT_SCOPE_KEY = "rightsize.gateway"


@dataclass(slots=True)
class Gateway:
    settings: Settings
    catalog: Catalog
    policy: PolicyEngine
    estimator: EstimateBatcher | None
    router: Router | None
    store: Store
    keys: KeyService
    spend: SpendWriter
    providers: Mapping[str, Provider]
    master_key: str | None
    cache: PromptCache
    ledger: Ledger  # budgets and rate limits (the ledger package)
    stickiness: Stickiness  # the tiers that served each conversation (gateway/stickiness.py)
    # gateway.fingerprint.config_hash of the catalog, policy and router settings, at start.
    config_hash: str | None = None
    metrics: Metrics | None = None  # None: server.metrics is off
    metrics_key: str | None = None  # the scrape key, read from auth.metrics_key_env
    log_requests: bool = False  # server.log_format: json, one line per request
    # Models with an `engine`: their health, load and replicas (None when there are none).
    local: LocalBackend | None = None
    # Prices the calls of GPU-hour-priced local deployments from their measured throughput.
    local_cost: LocalCostMeter = field(default_factory=LocalCostMeter)

    # By API: the providers that take a request in that API as is (gateway/native.py).
    natives: Mapping[str, NativeProvider] = field(default_factory=dict)
    # The parameters each deployment takes, resolved on first need (gateway/params.py).
    params: ParamTable = field(default_factory=ParamTable)
    tracing: Tracing | None = None  # None: no OTEL_* variable asks for traces
    # The deployments of tiers with a latency objective, measured (None: no tier has one).
    latency: LatencyWatch | None = None
    # Shadow evaluation (gateway/shadow.py); None: no team has it enabled.
    shadow: ShadowRunner | None = None

    def provider(self, deployment: Deployment) -> Provider:
        if deployment.engine is not None and "local" in self.providers:
            return self.providers["local"]
        return self.providers[deployment.transport]

    def native(self, deployment: Deployment, api: str) -> NativeProvider | None:
        """The provider that sends a request in `api` to the deployment as is, if it speaks it."""
        native = self.natives.get(api)
        return native if native is not None and native.speaks(deployment) else None


def gateway_of(request: HTTPConnection) -> Gateway:
    """The snapshot this request took when it arrived: a hot reload during the request does
    not change it (gateway/reload.py); the app's own where no middleware ran."""
    held: Gateway | None = request.scope.get(SNAPSHOT_SCOPE_KEY)
    return held if held is not None else request.app.state.gateway


def resolve_api_keys(catalog: Catalog, environ: Mapping[str, str]) -> dict[str, str]:
    """Each deployment's API key read from its named variable; a missing one fails the start."""
    keys: dict[str, str] = {}
    missing = []
    for deployment in catalog.deployments:
        if deployment.api_key_env is None:
            continue
        value = environ.get(deployment.api_key_env)
        if value:
            keys[deployment.name] = value
        else:
            missing.append(f"{deployment.name} (api_key_env: {deployment.api_key_env})")
    if missing:
        raise ConfigError(
            "models.api_key_env: these environment variables are not set: " + ", ".join(missing)
        )
    return keys
