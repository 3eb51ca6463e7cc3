"""Cache keys: a canonical hash of the team and of everything that determines the answer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.schemas import ChatRequest

# Bump when the key material or the entry format changes: old entries then simply miss.
KEY_VERSION = 1

# Fields that do not change the answer: how it is delivered, who asked, bookkeeping.
_NOT_IN_KEY = (
    "model",  # replaced by the routed deployment
    "stream",
    "stream_options",
    "user",
    "safety_identifier",
    "metadata",
    "prompt_cache_key",
    "store",
    "service_tier",
)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where one request's answer lives: the exact key and its semantic partition."""

    team: str
    exact: str
    partition: str  # "" when not asked for (no semantic lookup or store will read it)


def cache_key(team: str, route: str, chat: ChatRequest, *, semantic: bool = True) -> CacheKey:
    """The exact key (whole request) and, when `semantic`, the semantic partition (all but the
    last message): a second canonical dump and hash that only the semantic tier reads."""
    request = chat.upstream_payload()
    for name in _NOT_IN_KEY:
        request.pop(name, None)
    _integral_floats_as_ints(request)
    exact = _digest({"v": KEY_VERSION, "team": team, "route": route, "request": request})
    if not semantic:
        return CacheKey(team=team, exact=exact, partition="")
    messages = request["messages"]
    # The semantic tier compares the last message by embedding; everything else must match.
    context = {**request, "messages": messages[:-1], "last_role": messages[-1]["role"]}
    partition = _digest({"v": KEY_VERSION, "team": team, "route": route, "context": context})
    return CacheKey(team=team, exact=exact, partition=partition)


def _integral_floats_as_ints(request: dict[str, Any]) -> None:
    """`temperature: 0` and `temperature: 0.0` ask for the same answer; JSON spells them apart.

    Only top-level parameters: message text is a string, and a nested schema is rare enough not
    to walk on every request."""
    for name, value in request.items():
        if type(value) is float and value.is_integer():
            request[name] = int(value)


def _digest(material: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()
