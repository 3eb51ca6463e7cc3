"""Which parameters each deployment takes, and a request's payload fitted to them.

Derived from litellm's `get_supported_openai_params` for the model unless the configuration
lists them (`capabilities.params`). Resolved on first need, not at start, and where the
serving process has not imported litellm (every deployment `openai_http`) in a child process:
importing litellm takes seconds, holds the event loop up in stalls of 0.1 to 0.2 s while it
runs in a thread, and adds about 140 MiB to every worker, all for a table of names that a
request with `temperature` (a parameter some models refuse) needs once.

    python -m gateway.params < deployments.json    # the child: [{name, model, transport,
                                                   # reasoning}] in, {name: [params] | null} out
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.llm import litellm, litellm_loaded
from policies import Deployment
from policies.params import FITTED, ParamFit, fit_params

log = logging.getLogger("rightsize.params")

# Parameters only a reasoning model takes; litellm lists them for some models that are not
# (openai/gpt-4o) and then refuses them itself, so the model map's flag has the last word.
_REASONING_PARAMS = frozenset({"reasoning_effort", "thinking"})

ParamsOf = Callable[[Deployment], frozenset[str] | None]


# The child's whole run (an interpreter, litellm's import, the look-ups): seconds on a busy host.
_CHILD_TIMEOUT_S = 60.0


class ParamTable:
    """Each deployment's parameters, resolved once and kept.

    The first deployment that needs them resolves, in one go, every deployment of
    `deployments` not yet known (one child process for them all, not one per deployment);
    `derive` (tests) resolves one deployment in a thread instead.
    """

    def __init__(
        self, derive: ParamsOf | None = None, deployments: Sequence[Deployment] = ()
    ) -> None:
        self._derive = derive
        self._deployments = list(deployments)
        self._known: dict[str, frozenset[str] | None] = {}
        self._lock = asyncio.Lock()  # one resolution at a time: concurrent firsts wait for it

    async def takes(self, deployment: Deployment) -> frozenset[str] | None:
        """The parameters `deployment` takes; None where nobody knows (sent as they come)."""
        if deployment.capabilities.params is not None:
            return frozenset(deployment.capabilities.params)
        if deployment.name not in self._known:
            async with self._lock:
                if deployment.name not in self._known:
                    self._known.update(await self._resolve(deployment))
        return self._known[deployment.name]

    async def _resolve(self, deployment: Deployment) -> dict[str, frozenset[str] | None]:
        if self._derive is not None:
            return {deployment.name: await asyncio.to_thread(self._derive, deployment)}
        group = [deployment] + [
            d
            for d in self._deployments
            if d.name != deployment.name
            and d.name not in self._known
            and d.capabilities.params is None
        ]
        if not litellm_loaded():
            try:
                return await derived_params_apart(group)
            except Exception as exc:
                log.warning(
                    "deriving model parameters in a child process failed (%s); importing "
                    "litellm into this process instead (seconds, and its memory)",
                    exc,
                )
        return {d.name: await asyncio.to_thread(derived_params, d) for d in group}

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
    return _derived(_described(deployment))


async def derived_params_apart(
    deployments: Sequence[Deployment],
) -> dict[str, frozenset[str] | None]:
    """derived_params of each deployment, worked out by `python -m gateway.params` in a child
    process, so that this one never imports litellm. Raises if the child fails."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.params",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    request = orjson.dumps([_described(d) for d in deployments])
    try:
        async with asyncio.timeout(_CHILD_TIMEOUT_S):
            out, err = await child.communicate(request)
    except BaseException:
        if child.returncode is None:
            child.kill()
            await child.wait()
        raise
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"python -m gateway.params exited {child.returncode}: {tail[0]}")
    found: dict[str, list[str] | None] = orjson.loads(out)
    return {
        d.name: None if (takes := found[d.name]) is None else frozenset(takes) for d in deployments
    }


def _described(deployment: Deployment) -> dict[str, Any]:
    """What derived_params reads of a deployment, as JSON for the child."""
    return {
        "name": deployment.name,
        "model": deployment.model,
        "transport": deployment.transport,
        "reasoning": bool(deployment.capabilities.reasoning),
    }


def _derived(described: dict[str, Any]) -> frozenset[str] | None:
    lib = litellm()
    try:
        model, provider, _, _ = lib.get_llm_provider(described["model"])
        listed = lib.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception as exc:  # litellm raises its BadRequestError for a model it cannot place
        log.info("parameters of %r unknown to litellm (%s): sent as given", described["name"], exc)
        return None
    if listed is None:
        return None
    takes = set(listed)
    if not described["reasoning"]:
        takes -= _REASONING_PARAMS
    if described["transport"] == "openai_http":
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


def main() -> None:
    """The child of derived_params_apart: deployments as JSON on stdin, their parameters out."""
    described: list[dict[str, Any]] = orjson.loads(sys.stdin.buffer.read())
    found = {d["name"]: _derived(d) for d in described}
    reply = {name: None if takes is None else sorted(takes) for name, takes in found.items()}
    sys.stdout.buffer.write(orjson.dumps(reply))


if __name__ == "__main__":
    main()
