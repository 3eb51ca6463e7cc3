"""Other routers scored on the same prompts as ours (`rightsize eval --peer NAME`).

A peer is run as its authors ship it: its own code, imported, with its default configuration.
It predicts a demand ranking only, so its rows have routing cells and no budget cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.training.dataset import RoutingRecord
from router.training.evaluate import Predictions

PEERS: tuple[str, ...] = ("litellm",)


def litellm_complexity(prompts: Sequence[str]) -> Predictions:
    """LiteLLM's complexity router (rule-based heuristic, default config): its tier as demand.

    The tier's rank in the config's own severity order (by default SIMPLE < MEDIUM < COMPLEX <
    REASONING), scaled to [0, 1], is the demand; prompts in one tier tie, and the metrics route
    ties in expectation, which is how a tier router splits traffic.
    """
    from litellm.router_strategy.complexity_router.complexity_router import ComplexityRouter

    # The heuristic classifier reads only the prompt and its config; the LiteLLM Router it is
    # given is used to place requests on deployments, which scoring never asks it to do.
    peer = ComplexityRouter(model_name="rightsize-eval", litellm_router_instance=None)  # type: ignore[arg-type]
    # The tiers its configuration has, lowest first, as LiteLLM itself orders them.
    order = {tier: rank for rank, tier in enumerate(peer.config.active_tier_severity_order())}
    top = len(order) - 1
    demand = np.array([order[peer.classify(p)[0]] / top for p in prompts], dtype=np.float64)
    nan = np.full(len(prompts), np.nan)
    return Predictions("litellm (heuristic)", demand, nan, nan, probability=False, budget=False)


def peer_predictions(name: str, records: Sequence[RoutingRecord]) -> Predictions:
    """The named peer's predictions on records (names in PEERS)."""
    if name == "litellm":
        return litellm_complexity([r.prompt for r in records])
    raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
