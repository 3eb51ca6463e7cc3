"""Model catalog: declared models, their prices and capabilities, resolved to deployments."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", mode="before")
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
    transport: Literal["litellm", "openai_http"] = "litellm"
    timeout_s: float = Field(default=120.0, gt=0)
    price: Price | None = None
    capabilities: Capabilities = Field(default_factory=Capabilities)
    local: bool = False

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
    """Token counts of one call, in the OpenAI sense (prompt_tokens includes cached_tokens)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per token, exact."""

    input: Decimal
    output: Decimal
    cached_input: Decimal

    @classmethod
    def per_million(cls, price: Price) -> TokenPrice:
        cached = price.cached_input_per_mtok
        return cls(
            input=price.input_per_mtok / _MILLION,
            output=price.output_per_mtok / _MILLION,
            cached_input=(cached if cached is not None else price.input_per_mtok) / _MILLION,
        )

    def cost(self, usage: Usage) -> Decimal:
        """Exact cost of a call with this usage."""
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        return (
            uncached * self.input
            + usage.cached_tokens * self.cached_input
            + usage.completion_tokens * self.output
        )


FREE = TokenPrice(Decimal(0), Decimal(0), Decimal(0))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model database (litellm's) knows of a model."""

    price: TokenPrice | None
    context_window: int | None = None
    tools: bool | None = None
    vision: bool | None = None
    json_schema: bool | None = None
    reasoning: bool | None = None


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

    @property
    def upstream_model(self) -> str:
        """Model id sent to an OpenAI-compatible server (litellm's provider prefix removed)."""
        provider, sep, rest = self.model.partition("/")
        return rest if sep and provider in _OPENAI_COMPATIBLE_PREFIXES else self.model


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
            if spec.price is not None:
                price = TokenPrice.per_million(spec.price)
            elif info is not None and info.price is not None:
                price = info.price
            elif spec.local:
                price = FREE
            else:
                raise CatalogError(
                    index,
                    "price",
                    f"no price is known for {spec.model!r}; set price.input_per_mtok and "
                    "price.output_per_mtok, or mark the model local: true",
                )
            known = info or ModelInfo(price=None)
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


def _first(*values: _T | None) -> _T | None:
    return next((v for v in values if v is not None), None)
