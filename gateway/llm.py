"""The one place litellm is imported, with its offline settings applied first.

Importing litellm takes seconds, so the catalog's prices come from the model map litellm ships,
read directly; litellm itself is imported only by the code that calls through it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from policies import ModelInfo, TokenPrice

_litellm: ModuleType | None = None
_LOCAL_MAP_ENV = "LITELLM_LOCAL_MODEL_COST_MAP"
_BUNDLED_MAP = "model_prices_and_context_window_backup.json"
# A block of rules in the file that litellm takes out of the map when it loads it: not a model.
_NOT_A_MODEL = "fallback_generalizations"


def litellm() -> ModuleType:
    """Import litellm lazily (it takes seconds) and never let it fetch its price map."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault(_LOCAL_MAP_ENV, "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm as module

        module.telemetry = False
        module.suppress_debug_info = True
        _litellm = module
    return _litellm


def litellm_loaded() -> bool:
    """Whether this process has imported litellm already (a litellm deployment, or a caller)."""
    return _litellm is not None or "litellm" in sys.modules


def model_info(model: str) -> ModelInfo | None:
    """Prices and capabilities from litellm's bundled model map, exact as written there."""
    table = model_cost_table()
    entry: dict[str, Any] | None = table.get(model)
    if entry is None and "/" in model:
        entry = table.get(model.split("/", 1)[1])
    if entry is None:
        return None
    price = None
    mode = entry.get("mode")
    # An embedding model has no output tokens: some entries leave their price out.
    output = entry.get("output_cost_per_token", 0 if mode == "embedding" else None)
    if "input_cost_per_token" in entry and output is not None:
        cached = entry.get("cache_read_input_token_cost", entry["input_cost_per_token"])
        write = entry.get("cache_creation_input_token_cost")
        write_1h = entry.get("cache_creation_input_token_cost_above_1hr")
        price = TokenPrice(
            input=_exact(entry["input_cost_per_token"]),
            output=_exact(output),
            cached_input=_exact(cached),
            # Anthropic's prompt-cache writes, as litellm prices them (absent: the input price).
            cache_write=_exact(write) if write is not None else None,
            cache_write_1h=_exact(write_1h) if write_1h is not None else None,
        )
    batch_price = None
    batch_in, batch_out = (
        entry.get("input_cost_per_token_batches"),
        entry.get("output_cost_per_token_batches"),
    )
    if price is not None and batch_in is not None and batch_out is not None:
        # The provider's batch API price; its cached reads at the same discount as its input.
        ratio = _exact(batch_in) / price.input if price.input else Decimal("0.5")
        batch_price = TokenPrice(
            input=_exact(batch_in),
            output=_exact(batch_out),
            cached_input=price.cached_input * ratio,
        )
    return ModelInfo(
        price=price,
        batch_price=batch_price,
        context_window=entry.get("max_input_tokens"),
        tools=entry.get("supports_function_calling"),
        vision=entry.get("supports_vision"),
        json_schema=entry.get("supports_response_schema"),
        reasoning=entry.get("supports_reasoning"),
        mode=mode if isinstance(mode, str) else None,
    )


def model_cost_table() -> Mapping[str, dict[str, Any]]:
    """The map `litellm.model_cost` holds, without importing litellm where the file suffices."""
    if _litellm is not None:
        return _litellm.model_cost  # already imported: its map is the one it prices with
    if os.environ.get(_LOCAL_MAP_ENV, "True").lower() != "true":
        # The operator turned the local map off: litellm fetches the published one at import.
        return litellm().model_cost
    bundled = _bundled_model_cost()
    return litellm().model_cost if bundled is None else bundled


@functools.cache
def _bundled_model_cost() -> dict[str, dict[str, Any]] | None:
    """litellm's packaged map as litellm loads it (aliases expanded), or None if not found."""
    # find_spec locates the package without running its __init__ (the slow part).
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_MAP
    try:
        table: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    table.pop(_NOT_A_MODEL, None)
    # As litellm does: each alias names the same entry; an alias never shadows a real model.
    for entry in list(table.values()):
        aliases = entry.pop("aliases", None) if isinstance(entry, dict) else None
        for alias in aliases if isinstance(aliases, list) else ():
            table.setdefault(alias, entry)
    return table


def _exact(value: float | int | str) -> Decimal:
    # repr of a float is the shortest string that round-trips: the price as published.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
