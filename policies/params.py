"""Fitting a request's parameters to the deployment that serves it: kept, translated or dropped.

A client sending `auto` or a tier cannot know which model will answer, so a parameter the
chosen model does not take is translated to one it does (where the two mean the same thing)
or dropped, and the answer says which. A pinned model is the client's own choice: a parameter
it does not take is the client's error to hear about (the gateway decides that, not this module).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

# The parameters whose support differs between models. Others (messages, user, metadata, store,
# tools: the policy already routes tools to models that take them) go upstream untouched.
FITTED = frozenset(
    {
        "audio",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "reasoning_effort",
        "seed",
        "service_tier",
        "stop",
        "temperature",
        "thinking",
        "top_logprobs",
        "top_p",
        "verbosity",
        "web_search_options",
    }
)

# Anthropic thinking budgets for each reasoning effort: the ones litellm uses when it makes the
# same translation, so both transports spend alike.
THINKING_BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
_EFFORT_FROM_BUDGET = ((1024, "low"), (2048, "medium"))  # above the last bound: "high"


@dataclass(frozen=True, slots=True)
class ParamFit:
    """A payload fitted to one deployment, and what fitting changed."""

    payload: dict[str, Any]
    dropped: tuple[str, ...] = ()
    translated: tuple[tuple[str, str], ...] = field(default=())  # (sent as, sent upstream as)

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.translated)

    def describe(self, deployment: str) -> str:
        """The change in words, for the spend log's route reason."""
        parts = []
        if self.translated:
            moves = ", ".join(f"{a} -> {b}" for a, b in self.translated)
            parts.append(f"translated {moves} for {deployment!r}")
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)} (not taken by {deployment!r})")
        return "; ".join(parts)


def fit_params(payload: dict[str, Any], takes: Collection[str] | None) -> ParamFit:
    """`payload` with each fitted parameter the deployment does not take translated or dropped.

    `takes` None: the deployment's parameters are unknown, so the payload goes as sent.
    """
    if takes is None:
        return ParamFit(payload)
    missing = [name for name in payload if name in FITTED and name not in takes]
    if not missing:
        return ParamFit(payload)
    body = dict(payload)
    dropped: list[str] = []
    translated: list[tuple[str, str]] = []
    for name in missing:
        value = body.pop(name)
        target = _translate(name, value, takes)
        if target is None or target[0] in body:
            # Also when the client sent both names: its own value for the target wins.
            dropped.append(name)
        else:
            body[target[0]] = target[1]
            translated.append((name, target[0]))
    return ParamFit(body, tuple(dropped), tuple(translated))


def _translate(name: str, value: Any, takes: Collection[str]) -> tuple[str, Any] | None:
    """The same request under a name the deployment takes, or None if there is none."""
    if name == "max_tokens" and "max_completion_tokens" in takes:
        return "max_completion_tokens", value
    if name == "max_completion_tokens" and "max_tokens" in takes:
        return "max_tokens", value
    if name == "reasoning_effort" and "thinking" in takes and value in THINKING_BUDGETS:
        return "thinking", {"type": "enabled", "budget_tokens": THINKING_BUDGETS[value]}
    if name == "thinking" and "reasoning_effort" in takes and isinstance(value, dict):
        budget = value.get("budget_tokens")
        if value.get("type") != "enabled" or not isinstance(budget, int):
            return None
        return "reasoning_effort", effort_for_budget(budget)
    return None


def effort_for_budget(budget_tokens: int) -> str:
    """The reasoning effort whose thinking budget is the smallest one covering `budget_tokens`."""
    for bound, effort in _EFFORT_FROM_BUDGET:
        if budget_tokens <= bound:
            return effort
    return "high"
