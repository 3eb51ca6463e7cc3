"""Measure what to encode for multi-turn chats, on the dev split with simulated chats.

Usage: python benchmarks/router_multiturn.py --data DIR [--runtime static]
Each dev prompt becomes the last user turn of a chat; variants prepend a system prompt
and/or earlier turns (another dev prompt with a canned answer) to the encoded text.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from router import Router
from router.features import features_batch
from router.training.dataset import load_split
from router.training.evaluate import Predictions, score_rows, source_groups

SYSTEM = (
    "You are a helpful, harmless and honest assistant. Answer the user's questions "
    "accurately. If you are unsure, say so. Format code in markdown code blocks."
)
ANSWER = "Sure. Here is a short answer to your question, with the key points explained."


def variants(prompts: list[str], seed: int = 0) -> dict[str, list[str]]:
    """The encoded text per strategy for the same chats."""
    rng = random.Random(seed)
    earlier = [rng.choice(prompts) for _ in prompts]
    return {
        "last user turn (shipped)": prompts,
        "system + last user turn": [f"{SYSTEM}\n\n{p}" for p in prompts],
        "earlier turn + last user turn": [
            f"{e}\n\n{ANSWER}\n\n{p}" for e, p in zip(earlier, prompts, strict=True)
        ],
        "system + earlier + last": [
            f"{SYSTEM}\n\n{e}\n\n{ANSWER}\n\n{p}" for e, p in zip(earlier, prompts, strict=True)
        ],
    }


def main() -> None:
    """Print overall APGR / AUC / budget metrics per encoding strategy."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--runtime", default="static")
    args = parser.parse_args()
    dev = load_split(args.data, "dev")
    router = Router.load(runtime=args.runtime, cache_size=0)
    keys = ("apgr", "auc", "rho_level", "within_2x", "p90_cov")
    print("| encoded text | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, texts in variants([r.prompt for r in dev]).items():
        # Both the embedding and the hand-crafted features see the variant's text.
        pred = _with_features(router, texts, router.encoder.encode(texts), name)
        row = next(
            r for r in score_rows(dev, [pred], source_groups(dev)) if r["group"] == "overall"
        )
        print(f"| {name} | " + " | ".join(f"{float(str(row[k])):.3f}" for k in keys) + " |")


def _with_features(router: Router, texts: list[str], emb: np.ndarray, name: str) -> Predictions:
    heads = router.heads
    x = heads.design(emb, features_batch(texts, heads.feature_set))
    cats = heads.category(x)
    p50, p90 = heads.budget(x, cats)
    return Predictions(name, heads.demand(x, cats), p50, np.maximum(p50, p90))


if __name__ == "__main__":
    main()
