"""The one place litellm is imported, with its offline settings applied first."""

from __future__ import annotations

import os
from decimal import Decimal
from types import ModuleType
from typing import Any

from policies import ModelInfo, TokenPrice

_litellm: ModuleType | None = None


def litellm() -> ModuleType:
    """Import litellm lazily (it takes seconds) and never let it fetch its price map."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm as module

        module.telemetry = False
        module.suppress_debug_info = True
        _litellm = module
    return _litellm


def model_info(model: str) -> ModelInfo | None:
    """Prices and capabilities from litellm's bundled model map, exact as written there."""
    lib = litellm()
    entry: dict[str, Any] | None = lib.model_cost.get(model)
    if entry is None and "/" in model:
        entry = lib.model_cost.get(model.split("/", 1)[1])
    if entry is None:
        return None
    price = None
    if "input_cost_per_token" in entry and "output_cost_per_token" in entry:
        cached = entry.get("cache_read_input_token_cost", entry["input_cost_per_token"])
        price = TokenPrice(
            input=_exact(entry["input_cost_per_token"]),
            output=_exact(entry["output_cost_per_token"]),
            cached_input=_exact(cached),
        )
    return ModelInfo(
        price=price,
        context_window=entry.get("max_input_tokens"),
        tools=entry.get("supports_function_calling"),
        vision=entry.get("supports_vision"),
        json_schema=entry.get("supports_response_schema"),
        reasoning=entry.get("supports_reasoning"),
    )


def _exact(value: float | int | str) -> Decimal:
    # repr of a float is the shortest string that round-trips: the price as published.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
