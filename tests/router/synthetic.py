"""A small synthetic routing data set in the shared data's format, made by the tests."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

_EASY = [
    "Translate '{w}' to French.",
    "What is {a} plus {b}?",
    "Say hello to {w}.",
    "Name a color like {w}.",
]
_HARD = [
    "Prove that for every integer n > {a}, the sum of the first n odd numbers is n^2, step by step, and explain each lemma.",
    "Let f(x) = x^{a} + {b}x. Derive all critical points, show that they are minima, and prove uniqueness of the solution.",
    "Write a Python function that parses {w} expressions with precedence climbing, then prove it terminates.",
]
_WORDS = ["apple", "river", "matrix", "galaxy", "tensor", "violin", "harbor", "quartz"]


def _record(i: int, source: str, rng: random.Random) -> dict[str, Any]:
    hard = rng.random() < 0.5
    template = rng.choice(_HARD if hard else _EASY)
    prompt = (
        template.format(w=rng.choice(_WORDS), a=rng.randint(2, 99), b=rng.randint(2, 99))
        + f" (#{i})"
    )
    record: dict[str, Any] = {
        "id": f"{source}:{i}",
        "source": source,
        "prompt": prompt,
        "category": None,
        "difficulty": None,
        "outcomes": {},
        "output_tokens": {},
        "meta": {},
    }
    if source == "mmlu_pro":
        record["category"] = "stem"
        weak = [float(rng.random() > (0.8 if hard else 0.2)) for _ in range(4)]
        record["outcomes"] = {
            **{f"weak-{k}": v for k, v in enumerate(weak)},
            "Mixtral-8x7B-Instruct-v0.1": weak[0],
            "gpt-4o": 1.0,
        }
        record["output_tokens"] = {"gpt-4o": rng.randint(300, 900) if hard else rng.randint(10, 60)}
    elif source == "bbh":
        record["category"] = "reasoning"
        record["outcomes"] = {
            "davinci-direct": float(not hard or rng.random() < 0.2),
            "davinci-cot": 1.0,
        }
        record["output_tokens"] = {
            "davinci-direct": 3,
            "davinci-cot": rng.randint(150, 400) if hard else rng.randint(20, 60),
        }
    else:
        record["output_tokens"] = {
            "gpt-4-0314": rng.randint(400, 900) if hard else rng.randint(5, 40),
            "gpt-4-0613": rng.randint(300, 800) if hard else rng.randint(5, 40),
        }
    return record


def write_synthetic_data(
    directory: Path, n_train: int = 240, n_dev: int = 60, seed: int = 0
) -> Path:
    """Write train.jsonl.gz and dev.jsonl.gz with mmlu_pro, bbh and arena-style rows."""
    rng = random.Random(seed)
    sources = ["mmlu_pro", "bbh", "arena_hard_v01"]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        with gzip.open(directory / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            for i in range(n):
                handle.write(
                    json.dumps(_record(i if split == "train" else 10_000 + i, sources[i % 3], rng))
                    + "\n"
                )
    return directory
