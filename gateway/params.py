"""Which parameters each deployment takes, and a request's payload fitted to them.

Derived from litellm's `get_supported_openai_params` for the model unless the configuration
lists them (`capabilities.params`). Resolved on first need, not at start: a process whose
deployments are all `openai_http` imports litellm only once a request carries a parameter
that some model might not take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from gateway.errors import InvalidRequest
from gateway.llm import litellm
from policies import Deployment
from policies.params import FITTED, ParamFit, fit_params

log = logging.getLogger("rightsize.params")

# Parameters only a reasoning model takes; litellm lists them for some models that are not
# (openai/gpt-4o) and then refuses them itself, so the model map's flag has the last word.
_REASONING_PARAMS = frozenset({"reasoning_effort", "thinking"})

ParamsOf = Callable[[Deployment], frozenset[str] | None]


class ParamTable:
    """Each deployment's parameters, resolved once and kept (a thread does the first import)."""

    def __init__(self, derive: ParamsOf | None = None) -> None:
        self._derive = derive or derived_params
        self._known: dict[str, frozenset[str] | None] = {}

    async def takes(self, deployment: Deployment) -> frozenset[str] | None:
        """The parameters `deployment` takes; None where nobody knows (sent as they come)."""
        if deployment.capabilities.params is not None:
            return frozenset(deployment.capabilities.params)
        if deployment.name not in self._known:
            self._known[deployment.name] = await asyncio.to_thread(self._derive, deployment)
        return self._known[deployment.name]

    async def fit(
        self, deployment: Deployment, payload: dict[str, Any], *, pinned_by: Collection[str] = ()
    ) -> ParamFit:
        """`payload` fitted to `deployment`. `pinned_by`: the parameters the client sent to a
        model it pinned; one the model does not take is a 400 (the policy's own are dropped)."""
        if not any(name in FITTED for name in payload):
            return ParamFit(payload)
        fitted = fit_params(payload, await self.takes(deployment))
        refused = [name for name in fitted.dropped if name in pinned_by]
        if refused:
            name = refused[0]
            raise InvalidRequest(
                f"Model {deployment.name!r} does not take the parameter {name!r}; "
                "leave it out, or send model 'auto' to have it dropped where unsupported",
                param=name,
                code="unsupported_parameter",
            )
        return fitted


def derived_params(deployment: Deployment) -> frozenset[str] | None:
    """litellm's supported OpenAI parameters for the model, as this deployment's transport and
    capabilities allow them; None when litellm does not know the model."""
    lib = litellm()
    try:
        model, provider, _, _ = lib.get_llm_provider(deployment.model)
        listed = lib.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception as exc:  # litellm raises its BadRequestError for a model it cannot place
        log.info("parameters of %r unknown to litellm (%s): sent as given", deployment.name, exc)
        return None
    if listed is None:
        return None
    takes = set(listed)
    if not deployment.capabilities.reasoning:
        takes -= _REASONING_PARAMS
    if deployment.transport == "openai_http":
        # Sent as is, not through litellm's translation: o-series and gpt-5 models refuse
        # max_tokens (litellm renames it for them), and `thinking` is no OpenAI parameter.
        takes.discard("thinking")
        if _takes_only_max_completion_tokens(lib, model):
            takes.discard("max_tokens")
    return frozenset(takes)


def _takes_only_max_completion_tokens(lib: Any, model: str) -> bool:
    return bool(
        lib.OpenAIOSeriesConfig().is_model_o_series_model(model)
        or lib.OpenAIGPT5Config.is_model_gpt_5_model(model)
    )
