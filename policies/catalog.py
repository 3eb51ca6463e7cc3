"""Model catalog: declared models, their prices and capabilities, resolved to deployments."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.local_cost import GpuCost, Pricing

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_MILLION = Decimal(1_000_000)
_T = TypeVar("_T")


class Price(BaseModel):
    """Price override in USD per million tokens (exact decimals; write them as strings)."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cached_input_per_mtok: Decimal | None = Field(default=None, ge=0)
    # Anthropic's prompt-cache writes (5-minute and 1-hour); unset: the input price.
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: Decimal | None = Field(default=None, ge=0)
    # The provider's batch API price (POST /v1/batches); unset: half the interactive price.
    batch_input_per_mtok: Decimal | None = Field(default=None, ge=0)
    batch_output_per_mtok: Decimal | None = Field(default=None, ge=0)

    @field_validator(
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "batch_input_per_mtok",
        "batch_output_per_mtok",
        mode="before",
    )
    @classmethod
    def _no_binary_floats(cls, value: object) -> object:
        # A YAML float such as 0.1 is already inexact; going through str() keeps what was written.
        return str(value) if isinstance(value, float) else value


class Capabilities(BaseModel):
    """What a deployment supports; None means 'take it from litellm's model info'."""

    model_config = ConfigDict(extra="forbid")

    context_window: int | None = Field(default=None, gt=0)
    tools: bool | None = None
    vision: bool | None = None
    json_schema: bool | None = None
    reasoning: bool | None = Field(
        default=None, description="Accepts reasoning_effort (a thinking budget)."
    )
    params: list[str] | None = Field(
        default=None,
        description=(
            "The OpenAI parameters the deployment takes, replacing those derived from litellm "
            "(get_supported_openai_params for the model)."
        ),
    )


class ModelSpec(BaseModel):
    """One model as declared in the configuration file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name clients send as `model`.")
    model: str = Field(description="litellm model string, e.g. openai/gpt-4o-mini.")
    api_base: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    tier: str | None = None
    # anthropic: the Anthropic Messages API ({api_base}/v1/messages), as is for /v1/messages
    # requests; chat-completions requests reach it through litellm's Anthropic translation.
    transport: Literal["litellm", "openai_http", "anthropic"] = "litellm"
    timeout_s: float = Field(default=120.0, gt=0)
    price: Price | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    local: bool = False
    # A local engine (local_backend/): probed for health and load, its replicas picked per
    # request. Implies local: true and transport: openai_http.
    engine: Literal["vllm", "sglang", "llamacpp", "ollama", "openai"] | None = None
    replicas: list[str] = Field(
        default_factory=list,
        description="Base URLs of the engine's replicas (each as api_base would be); "
        "default: api_base alone.",
    )
    gpu_cost: GpuCost | None = Field(
        default=None, description="Local only: priced by the GPU-hour over measured throughput."
    )
    mode: Literal["chat", "embedding"] | None = Field(
        default=None,
        description="chat (served on the chat and messages endpoints) or embedding (served on "
        "/v1/embeddings only); default: litellm's model info says which, else chat.",
    )

    @model_validator(mode="after")
    def _engine_settings(self) -> ModelSpec:
        if self.replicas and self.engine is None:
            raise ValueError("replicas need an engine (vllm, sglang, llamacpp, ollama, openai)")
        if self.engine is None:
            return self
        if not self.replicas and not self.api_base:
            raise ValueError(f"engine {self.engine!r} needs api_base or replicas")
        if "transport" in self.model_fields_set and self.transport != "openai_http":
            raise ValueError("an engine is called through transport: openai_http")
        self.transport, self.local = "openai_http", True
        return self

    @model_validator(mode="after")
    def _one_way_to_price(self) -> ModelSpec:
        # After _engine_settings (declaration order): an engine implies local: true.
        if self.gpu_cost is not None and not self.local:
            raise ValueError("gpu_cost prices a local model: set local: true")
        if self.gpu_cost is not None and self.price is not None:
            raise ValueError("give a local model either price or gpu_cost, not both")
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _MODEL_NAME.match(value) or value == "auto":
            raise ValueError(f"{value!r} is not a usable model name")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_secret(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "must be the NAME of an environment variable (secrets are never written inline)"
            )
        return value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, in the OpenAI sense: prompt_tokens includes the tokens read from
    the prompt cache (cached_tokens) and those written to it (cache_creation_tokens, Anthropic's;
    cache_creation_1h_tokens of them at the 1-hour rate)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per token, exact."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal | None = None  # None: the input price
    cache_write_1h: Decimal | None = None  # None: the 5-minute write price

    @classmethod
    def per_million(cls, price: Price) -> TokenPrice:
        cached = price.cached_input_per_mtok
        write, write_1h = price.cache_write_per_mtok, price.cache_write_1h_per_mtok
        return cls(
            input=price.input_per_mtok / _MILLION,
            output=price.output_per_mtok / _MILLION,
            cached_input=(cached if cached is not None else price.input_per_mtok) / _MILLION,
            cache_write=write / _MILLION if write is not None else None,
            cache_write_1h=write_1h / _MILLION if write_1h is not None else None,
        )

    @classmethod
    def flat(cls, per_token: Decimal) -> TokenPrice:
        """The same price for every token (a local model priced by the GPU-hour)."""
        return cls(per_token, per_token, per_token)

    def halved(self) -> TokenPrice:
        """Every rate at half: the batch price where none is published (OpenAI's discount)."""
        half = Decimal("0.5")
        return TokenPrice(
            input=self.input * half,
            output=self.output * half,
            cached_input=self.cached_input * half,
            cache_write=self.cache_write * half if self.cache_write is not None else None,
            cache_write_1h=self.cache_write_1h * half if self.cache_write_1h is not None else None,
        )

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of a call with this usage."""
        written = usage.cache_creation_tokens
        written_1h = min(usage.cache_creation_1h_tokens, written)
        uncached = max(usage.prompt_tokens - usage.cached_tokens - written, 0)
        write = self.cache_write if self.cache_write is not None else self.input
        write_1h = self.cache_write_1h if self.cache_write_1h is not None else write
        return (
            uncached * self.input
            + usage.cached_tokens * self.cached_input
            + (written - written_1h) * write
            + written_1h * write_1h
            + usage.completion_tokens * self.output
        )


FREE = TokenPrice(Decimal(0), Decimal(0), Decimal(0))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model database (litellm's) knows of a model."""

    price: TokenPrice | None
    context_window: int | None = None
    batch_price: TokenPrice | None = None  # litellm's *_cost_per_token_batches
    tools: bool | None = None
    vision: bool | None = None
    json_schema: bool | None = None
    reasoning: bool | None = None
    mode: str | None = None  # litellm's word: chat, embedding, image_generation, ...


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model as the gateway calls it: where, how, at what price, with what capabilities."""

    name: str
    model: str
    api_base: str | None
    api_key_env: str | None
    tier: str | None
    transport: str
    timeout_s: float
    price: TokenPrice
    capabilities: Capabilities
    local: bool
    engine: str | None = None  # set: served through local_backend (probes, replica picking)
    replicas: tuple[str, ...] = ()  # engine replicas' base URLs (api_base when none listed)
    # How `price` was derived; with gpu_cost it is the expected price, the gateway's
    # LocalCostMeter (gateway/local_cost.py) prices each request from measured throughput.
    pricing: Pricing = "price"
    gpu_cost: GpuCost | None = None
    mode: Literal["chat", "embedding"] = "chat"
    # A line of POST /v1/batches (gateway/batches/): held and charged at this price.
    batch_price: TokenPrice | None = None

    @property
    def batch_rate(self) -> TokenPrice:
        """The batch price; unset (a hand-built deployment): the interactive price."""
        return self.batch_price if self.batch_price is not None else self.price

    @property
    def embedding(self) -> bool:
        """Served on /v1/embeddings only: never routed to, never in a tier."""
        return self.mode == "embedding"

    @property
    def upstream_model(self) -> str:
        """Model id sent to an OpenAI-compatible server (litellm's provider prefix removed)."""
        provider, sep, rest = self.model.partition("/")
        return rest if sep and provider in _OPENAI_COMPATIBLE_PREFIXES else self.model

    @property
    def speaks_anthropic(self) -> bool:
        """Whether the upstream is Anthropic's Messages API: an `anthropic/` model or the
        `anthropic` transport. Such a deployment gets /v1/messages requests as they came."""
        return self.transport == "anthropic" or self.model.startswith("anthropic/")

    @property
    def anthropic_model(self) -> str:
        """Model id sent to the Anthropic Messages API (litellm's `anthropic/` prefix removed)."""
        return self.model.removeprefix("anthropic/")


_OPENAI_COMPATIBLE_PREFIXES = {"openai", "hosted_vllm", "vllm", "text-completion-openai"}


class CatalogError(ValueError):
    """A declared model cannot be resolved; `index` and `field` locate it in `models`."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


ModelInfoLookup = Callable[[str], ModelInfo | None]


class Catalog:
    """Deployments by name and by tier, in declaration order."""

    def __init__(self, deployments: Iterable[Deployment]) -> None:
        self._by_name: dict[str, Deployment] = {}
        self._tiers: dict[str, list[Deployment]] = {}
        for deployment in deployments:
            self._by_name[deployment.name] = deployment
            if deployment.tier:
                self._tiers.setdefault(deployment.tier, []).append(deployment)

    @classmethod
    def build(cls, specs: list[ModelSpec], lookup: ModelInfoLookup) -> Catalog:
        """Resolve prices and capabilities; a remote model with no known price is an error."""
        deployments = []
        seen: set[str] = set()
        for index, spec in enumerate(specs):
            if spec.name in seen:
                raise CatalogError(index, "name", f"model name {spec.name!r} is declared twice")
            seen.add(spec.name)
            info = lookup(spec.model)
            pricing: Pricing
            if spec.price is not None:
                price, pricing = TokenPrice.per_million(spec.price), "price"
            elif spec.gpu_cost is not None:
                price = TokenPrice.flat(spec.gpu_cost.expected_usd_per_token)
                pricing = "gpu_hour"
            elif info is not None and info.price is not None:
                price, pricing = info.price, "model_database"
            elif spec.local:
                # Charged 0, but reported as unpriced (and warned of at start), never as free.
                price, pricing = FREE, "unpriced"
            else:
                raise CatalogError(
                    index,
                    "price",
                    f"no price is known for {spec.model!r}; set price.input_per_mtok and "
                    "price.output_per_mtok, or mark the model local: true (and give it gpu_cost)",
                )
            known = info or ModelInfo(price=None)
            mode = spec.mode or ("embedding" if known.mode == "embedding" else "chat")
            if mode == "embedding" and spec.tier:
                raise CatalogError(
                    index,
                    "tier",
                    f"{spec.name!r} is an embedding model: it serves /v1/embeddings by its own "
                    "name and cannot be in a tier",
                )
            caps = Capabilities(
                context_window=_first(spec.capabilities.context_window, known.context_window),
                tools=_first(spec.capabilities.tools, known.tools),
                vision=_first(spec.capabilities.vision, known.vision),
                json_schema=_first(spec.capabilities.json_schema, known.json_schema),
                reasoning=_first(spec.capabilities.reasoning, known.reasoning),
                params=spec.capabilities.params,
            )
            deployments.append(
                Deployment(
                    batch_price=_batch_price(spec, known, price, pricing),
                    name=spec.name,
                    model=spec.model,
                    api_base=spec.api_base,
                    api_key_env=spec.api_key_env,
                    tier=spec.tier,
                    transport=spec.transport,
                    timeout_s=spec.timeout_s,
                    price=price,
                    capabilities=caps,
                    local=spec.local,
                    engine=spec.engine,
                    replicas=tuple(spec.replicas)
                    or ((spec.api_base,) if spec.engine and spec.api_base else ()),
                    pricing=pricing,
                    gpu_cost=spec.gpu_cost,
                    mode=mode,
                )
            )
        return cls(deployments)

    def get(self, name: str) -> Deployment | None:
        return self._by_name.get(name)

    def tier(self, name: str) -> list[Deployment]:
        return list(self._tiers.get(name, ()))

    @property
    def deployments(self) -> list[Deployment]:
        return list(self._by_name.values())

    @property
    def tier_names(self) -> list[str]:
        return list(self._tiers)

    @property
    def unpriced(self) -> list[Deployment]:
        """Local deployments with no price at all: their spend is unknown, not zero."""
        return [d for d in self._by_name.values() if d.pricing == "unpriced"]


def _batch_price(spec: ModelSpec, info: ModelInfo, price: TokenPrice, pricing: str) -> TokenPrice:
    """The configured batch price, else the model database's, else half the interactive price.
    A local model's batch lines cost what its interactive ones do (no provider discount)."""
    given = spec.price
    if given is not None and (given.batch_input_per_mtok, given.batch_output_per_mtok) != (
        None,
        None,
    ):
        half = price.halved()
        batch_in, batch_out = given.batch_input_per_mtok, given.batch_output_per_mtok
        return replace(
            half,
            input=batch_in / _MILLION if batch_in is not None else half.input,
            output=batch_out / _MILLION if batch_out is not None else half.output,
        )
    if spec.local or pricing == "unpriced":
        return price
    if pricing == "model_database" and info.batch_price is not None:
        return info.batch_price
    return price.halved()


def _first(*values: _T | None) -> _T | None:
    return next((v for v in values if v is not None), None)
