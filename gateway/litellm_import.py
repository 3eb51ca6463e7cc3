"""A LiteLLM proxy configuration turned into a Rightsize one (`rightsize config import`).

Every setting is either carried (possibly reshaped, with a note saying how) or reported as not
carried, with the reason and what to do instead: nothing is lost silently. Secrets are never
copied: an `os.environ/NAME` reference becomes the variable's name, an inline key a note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from policies import ModelInfo

_ENV_REF = "os.environ/"
_MILLION = Decimal(1_000_000)
_UNUSABLE = re.compile(r"[^A-Za-z0-9._:/@-]")
_MAX_ATTEMPTS = 10  # policy.retries.max_attempts' bound
_DEFAULT_ATTEMPTS = 3  # and its default

# model_info flags and the capability each one is in Rightsize.
_CAPABILITIES = {
    "supports_function_calling": "tools",
    "supports_vision": "vision",
    "supports_response_schema": "json_schema",
    "supports_reasoning": "reasoning",
    "max_input_tokens": "context_window",
}
_PRICES = ("input_cost_per_token", "output_cost_per_token")
# litellm_params keys this module carries itself; any other is reported.
_CARRIED_PARAMS = {"model", "api_key", "api_base", "timeout", "rpm", "tpm"}
_WHY_NOT = {
    "rpm": "per-deployment rate limits are not a Rightsize setting; limits belong to teams and "
    "keys (`rightsize budgets`)",
    "stream_timeout": "Rightsize has one timeout per deployment (timeout_s)",
    "api_version": "not a Rightsize setting; litellm reads AZURE_API_VERSION from the environment",
}
_WHY_NOT["tpm"] = _WHY_NOT["rpm"]

ModeOf = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Note:
    """One setting of the LiteLLM file, by its path there, and what became of it."""

    where: str
    text: str
    carried: bool  # True: carried in another shape; False: not carried at all

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(slots=True)
class Imported:
    """The Rightsize configuration, as plain data ready for YAML, and the notes on it."""

    config: dict[str, Any]
    notes: list[Note] = field(default_factory=list)

    @property
    def not_carried(self) -> list[Note]:
        return [n for n in self.notes if not n.carried]


def import_litellm(
    source: Mapping[str, Any], lookup: Callable[[str], ModelInfo | None], mode_of: ModeOf
) -> Imported:
    """Translate a LiteLLM proxy configuration; `lookup` and `mode_of` read litellm's model map
    (prices, and whether a model is a chat model)."""
    imported = Imported({})
    notes = imported.notes
    timeout = _global_timeout(source, notes)
    models, by_group = _models(source.get("model_list") or [], lookup, mode_of, notes)
    imported.config["models"] = models
    if timeout is not None:
        for model in models:
            model.setdefault("timeout_s", timeout)
    policy = _policy(source, notes)
    longest = _fallbacks(source, models, by_group, notes)
    if longest:
        policy["selection"] = "order"  # a tier's own deployments first, then its fallbacks
        attempts = policy.get("retries", {}).get("max_attempts", _DEFAULT_ATTEMPTS)
        if attempts < longest:
            # LiteLLM tries the fallbacks after the group's retries: they must be reachable.
            policy["retries"] = {"max_attempts": min(longest, _MAX_ATTEMPTS)}
            notes.append(
                Note(
                    "policy.retries.max_attempts",
                    f"set to {policy['retries']['max_attempts']}, so that the longest "
                    "fallback chain is tried to its end",
                    True,
                )
            )
    if policy:
        imported.config["policy"] = policy
    auth = _general(source.get("general_settings") or {}, notes)
    if auth:
        imported.config["auth"] = auth
    _unmapped_router_settings(source, notes)
    for key in source.get("environment_variables") or {}:
        notes.append(
            Note(
                f"environment_variables.{key}",
                "not carried: Rightsize reads the process environment; set it there",
                False,
            )
        )
    for section in source:
        if section not in _SECTIONS:
            notes.append(Note(section, "not carried: no Rightsize counterpart", False))
    return imported


_SECTIONS = {
    "model_list",
    "litellm_settings",
    "router_settings",
    "general_settings",
    "environment_variables",
}


def _models(
    entries: list[Any],
    lookup: Callable[[str], ModelInfo | None],
    mode_of: ModeOf,
    notes: list[Note],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """One Rightsize model per chat deployment; a name used by several becomes a tier. Also
    returns the models by the LiteLLM model_name they came from."""
    chat = [c for c in (_chat_entry(i, e, mode_of, notes) for i, e in enumerate(entries)) if c]
    groups: dict[str, int] = {}
    for _, _, group in chat:
        groups[group] = groups.get(group, 0) + 1
    taken: set[str] = set()
    seen: dict[str, int] = {}
    models = []
    by_group: dict[str, list[dict[str, Any]]] = {}
    for index, entry, group in chat:
        where = f"model_list[{index}]"
        params = entry.get("litellm_params") or {}
        info = entry.get("model_info") or {}
        litellm_model = str(params["model"])
        seen[group] = seen.get(group, 0) + 1
        name = _name(group, seen[group] if groups[group] > 1 else None, taken, where, notes)
        model: dict[str, Any] = {"name": name, "model": litellm_model}
        if groups[group] > 1:
            model["tier"] = group
            if seen[group] == 1:
                notes.append(
                    Note(
                        f"model_list[*].model_name={group}",
                        f"carried: the {groups[group]} deployments named {group!r} are the "
                        f"tier {group!r} (clients keep sending {group!r}); litellm's load "
                        "balancing becomes the policy's choice within the tier",
                        True,
                    )
                )
        _endpoint(model, params, where, notes)
        priced_by = _price(model, params, info, lookup, where, notes)
        _capabilities(model, info)
        for key, value in params.items():
            if key not in _CARRIED_PARAMS and not (
                priced_by == "litellm_params" and key in _PRICES
            ):
                _lost(notes, f"{where}.litellm_params.{key}", value, _WHY_NOT.get(key))
        for key in ("rpm", "tpm"):
            for at, holder in (("litellm_params.", params), ("", entry)):
                if key in holder:
                    _lost(notes, f"{where}.{at}{key}", holder[key], _WHY_NOT[key])
        used_info = {"mode", *_CAPABILITIES} | _info_used(priced_by)
        for key, value in info.items():
            if key not in used_info or (key in _CAPABILITIES and key not in _caps_of(info)):
                _lost(notes, f"{where}.model_info.{key}", value, None)
        for key in entry:
            if key not in {"model_name", "litellm_params", "model_info", "rpm", "tpm"}:
                _lost(notes, f"{where}.{key}", entry[key], None)
        models.append(model)
        by_group.setdefault(group, []).append(model)
    return models, by_group


def _chat_entry(
    index: int, entry: Any, mode_of: ModeOf, notes: list[Note]
) -> tuple[int, dict[str, Any], str] | None:
    """The entry and its model_name if it is a chat deployment Rightsize can serve; else None,
    with a note saying why not."""
    where = f"model_list[{index}]"
    if not isinstance(entry, dict):
        notes.append(Note(where, "not carried: not a mapping", False))
        return None
    group = str(entry.get("model_name") or "")
    params = entry.get("litellm_params") or {}
    info = entry.get("model_info") or {}
    litellm_model = str(params.get("model") or "") if isinstance(params, dict) else ""
    if "*" in group or "*" in litellm_model:
        why = (
            f"wildcard route {group!r} -> {litellm_model!r}; Rightsize serves declared models "
            "only: declare each model it should serve"
        )
    elif not isinstance(info, dict) or not isinstance(params, dict):
        why = "litellm_params and model_info must be mappings"
    elif (mode := info.get("mode") or mode_of(litellm_model)) not in (None, "chat"):
        why = f"{group!r} is a {mode!r} model, not a chat model"
    elif not litellm_model or litellm_model.endswith("/"):
        why = f"{group!r} names no model"
    else:
        return index, entry, group
    notes.append(Note(where, f"not carried: {why}", False))
    return None


def _name(group: str, number: int | None, taken: set[str], where: str, notes: list[Note]) -> str:
    """A usable, unique model name from the LiteLLM model_name."""
    base = _UNUSABLE.sub("-", group).strip("-.") or "model"
    if base == "auto":
        base = "auto-model"  # `auto` is the router's own name
    name = f"{base}-{number}" if number is not None else base
    while name in taken:
        name += "-x"
    taken.add(name)
    if base != group:
        notes.append(Note(f"{where}.model_name", f"carried as {name!r}: {group!r} is no usable "
                          "model name", True))  # fmt: skip
    return name


def _endpoint(
    model: dict[str, Any], params: Mapping[str, Any], where: str, notes: list[Note]
) -> None:
    """api_key to api_key_env, api_base, timeout."""
    key = params.get("api_key")
    if isinstance(key, str) and key.startswith(_ENV_REF):
        model["api_key_env"] = key.removeprefix(_ENV_REF)
    elif key is not None:
        variable = _UNUSABLE.sub("_", model["name"]).replace("-", "_").replace(".", "_")
        variable = re.sub(r"[^A-Za-z0-9_]", "_", variable).upper() + "_API_KEY"
        model["api_key_env"] = variable
        notes.append(
            Note(
                f"{where}.litellm_params.api_key",
                f"not carried: an inline key (never written into a Rightsize file); export it "
                f"as {variable}, which this model now names",
                False,
            )
        )
    base = params.get("api_base")
    if isinstance(base, str) and base.startswith(_ENV_REF):
        notes.append(
            Note(
                f"{where}.litellm_params.api_base",
                f"not carried: read from ${base.removeprefix(_ENV_REF)} in LiteLLM; set "
                f"RIGHTSIZE_MODELS__<n>__API_BASE for this model (n: its place in models)",
                False,
            )
        )
    elif base is not None:
        model["api_base"] = str(base)
    timeout = params.get("timeout")
    if isinstance(timeout, int | float) and timeout > 0:
        model["timeout_s"] = float(timeout)
    elif timeout is not None:
        _lost(notes, f"{where}.litellm_params.timeout", timeout, "not a number of seconds")


def _price(
    model: dict[str, Any],
    params: Mapping[str, Any],
    info: Mapping[str, Any],
    lookup: Callable[[str], ModelInfo | None],
    where: str,
    notes: list[Note],
) -> str | None:
    """The file's own prices, else litellm's for the model, else its base_model's, else 0;
    returns what priced it (model_info, litellm_params, base_model) if the file did."""
    for holder, at in ((info, "model_info"), (params, "litellm_params")):
        if all(isinstance(holder.get(p), int | float | str) for p in _PRICES):
            model["price"] = {
                "input_per_mtok": _per_mtok(holder["input_cost_per_token"]),
                "output_per_mtok": _per_mtok(holder["output_cost_per_token"]),
            }
            notes.append(Note(f"{where}.{at}", "carried: prices per token as per million", True))
            return at
    known = lookup(model["model"])
    if known is not None and known.price is not None:
        return None
    base = info.get("base_model")
    based = lookup(str(base)) if base else None
    if based is not None and based.price is not None:
        model["price"] = {
            "input_per_mtok": _mtok_string(based.price.input * _MILLION),
            "output_per_mtok": _mtok_string(based.price.output * _MILLION),
            "cached_input_per_mtok": _mtok_string(based.price.cached_input * _MILLION),
        }
        notes.append(Note(f"{where}.model_info.base_model", f"carried: priced as {base!r}", True))
        return "base_model"
    model["price"] = {"input_per_mtok": "0", "output_per_mtok": "0"}
    notes.append(
        Note(
            f"{where}.litellm_params.model",
            f"no price is known for {model['model']!r}: priced at 0 (budgets will not see its "
            "spend) until you set price.input_per_mtok and price.output_per_mtok",
            True,
        )
    )
    return None


def _info_used(priced_by: str | None) -> set[str]:
    if priced_by == "model_info":
        return set(_PRICES)
    return {"base_model"} if priced_by == "base_model" else set()


def _caps_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """model_info's capability flags that Rightsize can take, by Rightsize's names."""
    caps: dict[str, Any] = {}
    for flag, target in _CAPABILITIES.items():
        value = info.get(flag)
        if target == "context_window" and isinstance(value, int) and value > 0:
            caps[flag] = value
        elif target != "context_window" and isinstance(value, bool):
            caps[flag] = value
    return caps


def _capabilities(model: dict[str, Any], info: Mapping[str, Any]) -> None:
    caps = {_CAPABILITIES[flag]: value for flag, value in _caps_of(info).items()}
    if caps:
        model["capabilities"] = caps


def _global_timeout(source: Mapping[str, Any], notes: list[Note]) -> float | None:
    """router_settings.timeout or litellm_settings.request_timeout: each model's default."""
    found = _first_setting(source, (("router_settings", "timeout"),
                                    ("litellm_settings", "request_timeout")), notes)  # fmt: skip
    if found is None:
        return None
    where, value = found
    if not isinstance(value, int | float) or value <= 0:
        _lost(notes, where, value, "not a number of seconds")
        return None
    notes.append(Note(where, "carried: timeout_s of each model that sets none", True))
    return float(value)


def _policy(source: Mapping[str, Any], notes: list[Note]) -> dict[str, Any]:
    """num_retries: how many deployments of a tier are tried."""
    found = _first_setting(source, (("router_settings", "num_retries"),
                                    ("litellm_settings", "num_retries")), notes)  # fmt: skip
    if found is None:
        return {}
    where, retries = found
    if not isinstance(retries, int) or retries < 0:
        _lost(notes, where, retries, "not a number of retries")
        return {}
    attempts = min(retries + 1, _MAX_ATTEMPTS)
    notes.append(
        Note(
            where,
            f"carried as policy.retries.max_attempts: {attempts} (Rightsize retries on the next "
            "deployment of the tier, never the same one)",
            True,
        )
    )
    return {"retries": {"max_attempts": attempts}}


def _first_setting(
    source: Mapping[str, Any], places: tuple[tuple[str, str], ...], notes: list[Note]
) -> tuple[str, Any] | None:
    """The first of `places` the file sets (as LiteLLM's router reads them); the others set
    are reported as overridden by it."""
    present = [
        (f"{section}.{key}", (source.get(section) or {})[key])
        for section, key in places
        if isinstance(source.get(section), dict) and key in source[section]
    ]
    for where, value in present[1:]:
        _lost(notes, where, value, f"{present[0][0]} is the one carried")
    return present[0] if present else None


def _fallbacks(
    source: Mapping[str, Any],
    models: list[dict[str, Any]],
    by_group: dict[str, list[dict[str, Any]]],
    notes: list[Note],
) -> int:
    """`fallbacks: [{A: [B, C]}]` as the tier A: A's deployments, then B and C, tried in
    order. Mappable where B and C are single models in no tier of their own; returns the
    length of the longest tier so made (0: none)."""
    found = _first_setting(source, (("router_settings", "fallbacks"),
                                    ("litellm_settings", "fallbacks")), notes)  # fmt: skip
    if found is None:
        return 0
    where, entries = found
    if not isinstance(entries, list):
        _lost(notes, where, entries, "not a list of {model: [fallbacks]}")
        return 0
    claimed: set[str] = set()
    longest = 0
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if not (isinstance(entry, dict) and len(entry) == 1):
            _lost(notes, at, entry, "not a {model: [fallbacks]} entry")
            continue
        [(source_name, targets)] = entry.items()
        why = _why_unmappable(str(source_name), targets, by_group, claimed)
        if why is not None:
            notes.append(Note(at, f"not carried: {entry!r}; {why}", False))
            continue
        chain = list(by_group[str(source_name)])
        if len(chain) == 1 and "tier" not in chain[0]:
            # The tier takes the name clients send; the deployment is renamed beside it.
            chain[0]["name"] = _free_name(f"{chain[0]['name']}-1", models)
        for model in chain:
            model["tier"] = str(source_name)
        for target in targets:
            [model] = by_group[target]
            model["tier"] = str(source_name)
            claimed.add(target)
            # Declaration order is the tier's order: each fallback right after the chain.
            models.remove(model)
            models.insert(models.index(chain[-1]) + 1, model)
            chain.append(model)
        claimed.add(str(source_name))
        names = ", ".join(repr(m["name"]) for m in chain)
        notes.append(
            Note(
                at,
                f"carried as the tier {source_name!r}: {names}, tried in this order "
                "(policy.selection: order); clients keep sending "
                f"{source_name!r}, and may still pin {', '.join(map(repr, targets))}",
                True,
            )
        )
        longest = max(longest, len(chain))
    return longest


def _why_unmappable(
    source_name: str, targets: Any, by_group: Mapping[str, list[dict[str, Any]]], claimed: set[str]
) -> str | None:
    """Why a fallback entry cannot become a tier, or None if it can."""
    if source_name not in by_group:
        return f"{source_name!r} is not an imported model"
    if source_name in claimed:
        return f"{source_name!r} is already another model's fallback"
    if not isinstance(targets, list) or not targets:
        return "its fallbacks are not a list of model names"
    for target in targets:
        if not isinstance(target, str) or target not in by_group:
            return f"{target!r} is not an imported model"
        if target == source_name or target in claimed:
            return f"{target!r} already falls back or stands in elsewhere"
        if len(by_group[target]) > 1 or "tier" in by_group[target][0]:
            return (
                f"{target!r} is a tier of its own; Rightsize tiers fall back to tiers only in "
                "policy.tiers (by demand): set that up by hand"
            )
    return None


def _free_name(name: str, models: list[dict[str, Any]]) -> str:
    taken = {m["name"] for m in models}
    while name in taken:
        name += "-x"
    return name


def _general(general: Mapping[str, Any], notes: list[Note]) -> dict[str, Any]:
    """The auth section: master_key by environment variable name only; the rest reported."""
    auth: dict[str, Any] = {}
    for key, value in general.items():
        where = f"general_settings.{key}"
        reference = value.removeprefix(_ENV_REF) if isinstance(value, str) else None
        by_name = isinstance(value, str) and value.startswith(_ENV_REF)
        if key == "master_key" and by_name:
            auth["master_key_env"] = reference
            notes.append(Note(where, f"carried as auth.master_key_env: {reference}", True))
        elif key == "master_key":
            notes.append(
                Note(
                    where,
                    "not carried: an inline secret; export it as RIGHTSIZE_MASTER_KEY "
                    "(auth.master_key_env)",
                    False,
                )
            )
        elif key == "database_url":
            hint = f"${reference}" if by_name else "it"
            notes.append(
                Note(
                    where,
                    f"not carried (it holds a password): set RIGHTSIZE_STORE__URL from "
                    f"{hint} (a SQLAlchemy URL, e.g. postgresql+psycopg://...)",
                    False,
                )
            )
        else:
            _lost(notes, where, value, None)
    return auth


def _unmapped_router_settings(source: Mapping[str, Any], notes: list[Note]) -> None:
    """Every router and litellm setting not carried above, named with the reason."""
    reasons = {
        "context_window_fallbacks": "the policy already skips deployments whose context window "
        "the request would overflow",
        "model_group_alias": "Rightsize has no aliases; clients send the model or tier name",
        "routing_strategy": "within a tier the policy picks by expected cost (policy.selection)",
        "drop_params": "Rightsize fits parameters to the routed model itself (dropped ones are "
        "reported in x-rightsize-dropped-params)",
    }
    carried = {("router_settings", "timeout"), ("litellm_settings", "request_timeout")}
    carried |= {("router_settings", "num_retries"), ("litellm_settings", "num_retries")}
    carried |= {("router_settings", "fallbacks"), ("litellm_settings", "fallbacks")}
    for section in ("router_settings", "litellm_settings"):
        for key, value in (source.get(section) or {}).items():
            if (section, key) in carried:
                continue
            _lost(notes, f"{section}.{key}", value, reasons.get(key))


def _lost(notes: list[Note], where: str, value: Any, why: str | None) -> None:
    reason = why or "no Rightsize counterpart"
    notes.append(Note(where, f"not carried: {_shown(where, value)}; {reason}", False))


def _shown(where: str, value: Any) -> str:
    """The value as the report may quote it: never a secret, never a nested block (which
    may hold one, as headers do)."""
    if isinstance(value, str) and value.startswith(_ENV_REF):
        return value  # a variable's name, not its value
    name = where.rsplit(".", 1)[-1]
    if _SECRET_NAME.search(name):
        return "(a secret, not shown)"
    if name in _QUOTED_WHOLE:
        return repr(value)
    if isinstance(value, dict):
        return f"(a mapping of {', '.join(map(str, value))})"
    if isinstance(value, list):
        return f"(a list of {len(value)})"
    return repr(value)


_SECRET_NAME = re.compile(r"(keys?|secrets?|passwords?|_token|credentials?)$", re.IGNORECASE)
# Blocks that hold model names and callback names only: quoted whole, being the thing to redo.
_QUOTED_WHOLE = {
    "fallbacks",
    "context_window_fallbacks",
    "model_group_alias",
    "success_callback",
    "failure_callback",
    "callbacks",
    "alerting",
}


def _per_mtok(value: int | float | str) -> str:
    # repr of a float is the shortest string that round-trips: the price as written.
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return _mtok_string(exact * _MILLION)


def _mtok_string(value: Decimal) -> str:
    return format(value.normalize(), "f")
