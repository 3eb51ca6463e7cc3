"""The semantic tier's lexical guard: what the embedding cannot see, read from the prompt's text.

The router's static embedding is a mean of token vectors: blind to word order and nearly blind
to digits, so "5 balls in 3 boxes" and "3 balls in 5 boxes" score 1.0. The guard adds what it
misses, from the same text the embedding is of (no second encode):

- a signature that must match exactly: every number with the content token before it (which
  quantity it is) and how many negations the prompt holds; it becomes part of the semantic
  partition, so prompts that differ in it are never even compared;
- its content-word bigrams, for the order check: a candidate must share at least a given
  share of the shorter prompt's bigrams, so the same words in another order ("Celsius to
  Fahrenheit" / "Fahrenheit to Celsius") do not hit;
- its content words (all but a short list of grammatical words), for the replacement check:
  one prompt's content words must all occur in the other's, which may add at most two. Words
  may be added ("Quick question: ..."), not swapped: "the capital of France" / "of Spain",
  "Dave is playing" / "Claire is playing". With one word replaced, more than half of the dev
  prompts still score 0.99 or more against their original.

Casing, spacing and sentence punctuation change none of them (docs/cache.md says why that is
sound).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Numbers with thousands separators or decimals; words with an optional contraction; and the
# symbols that change a calculation. Sentence punctuation, brackets and quotes are left out.
_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)"
    r"|(?P<sym>[+\-*/^=<>%$])"
)
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nor", "neither", "nobody", "nothing", "nowhere", "without"}
)
# Contractions are the same words: "don't" is "do not", so both count one negation.
_IRREGULAR_NOT = {"won't": "will", "can't": "can", "shan't": "shall", "ain't": "is"}
# Grammar rather than subject: articles, forms of be / do / have, modal verbs and the
# clitics of contractions ("what's", "I'm"). Deliberately not here: pronouns ("he" / "she"
# change who is meant), prepositions, quantifiers, conjunctions and question words ("above" /
# "below", "and" / "or", "what" / "why"), and negations (counted in the signature).
_FUNCTION_WORDS = frozenset(
    """a an the am is are was were be been being do does did doing done have has had having
    can could will would shall should may might must s m re ve ll d""".split()
)

Hashes = npt.NDArray[np.int64]
# A hit may add a greeting or a "please" ("Hi!", "Quick question:"), not a clause: with a
# sentence appended, 23% of the dev prompts still score 0.99 or more (docs/benchmarks.md).
MAX_ADDED_WORDS = 2


@dataclass(frozen=True, slots=True)
class PromptGuard:
    """A prompt's exact-match signature, word bigrams and content words (hashed, sorted)."""

    signature: str
    bigrams: Hashes
    content: Hashes  # each content word with its occurrence number: a multiset as a set

    def refuses(self, other: PromptGuard, min_overlap: float) -> str | None:
        """Why `other` may not answer for this prompt, or None: "word_order", "words_replaced"
        or "words_added" (more than MAX_ADDED_WORDS content words on one side).

        The signature is checked by the caller (it is part of the semantic partition)."""
        if self.overlap(other) < min_overlap:
            return "word_order"
        shared = len(np.intersect1d(self.content, other.content, assume_unique=True))
        fewer, more = sorted((len(self.content), len(other.content)))
        if shared != fewer:
            return "words_replaced"
        if more - fewer > MAX_ADDED_WORDS:
            return "words_added"
        return None

    def overlap(self, other: PromptGuard) -> float:
        """The share of the shorter prompt's content-word bigrams that the other one has."""
        shared = len(np.intersect1d(self.bigrams, other.bigrams, assume_unique=True))
        return shared / min(len(self.bigrams), len(other.bigrams))


def tokens(text: str) -> list[str]:
    """Lower-cased words (contractions expanded), numbers without separators, math symbols."""
    found: list[str] = []
    for match in _TOKEN.finditer(text.lower().replace("\u2019", "'")):
        number, word = match.group("num"), match.group("word")
        if number is not None:
            found.append(number.replace(",", ""))
        elif word is None:
            found.append(match.group("sym"))
        elif word.endswith("n't"):
            base = _IRREGULAR_NOT.get(word, word[:-3])
            found += [base, "not"] if base else ["not"]  # "n't" alone, as tokenisers write it
        elif word == "cannot":
            found += ["can", "not"]
        else:
            found += [part for part in word.split("'") if part]  # "what's": "what", "s"
    return found


def prompt_guard(text: str) -> PromptGuard:
    """The guard of one prompt (the text the router embeds)."""
    words = tokens(text)
    kept = [w for w in words if w not in _FUNCTION_WORDS]
    # Each number with the content token before it, as a multiset: the same numbers attached
    # to the same things, whatever the order of the sentences they sit in.
    numbers = sorted(f"{kept[i - 1] if i else ''} {w}" for i, w in enumerate(kept) if _number(w))
    negations = sum(w in _NEGATIONS for w in words)
    material = "\x1f".join([str(negations), *numbers]).encode()
    signature = hashlib.blake2b(material, digest_size=12).hexdigest()
    # Python's hash: the index lives in this process, so the values need not be stable.
    pairs = {hash(pair) for pair in itertools.pairwise(kept)} or {hash(tuple(kept))}
    seen: Counter[str] = Counter()
    content = set()
    for w in kept:
        if not _number(w):
            seen[w] += 1
            content.add(hash((w, seen[w])))
    return PromptGuard(signature, _sorted(pairs), _sorted(content))


def _number(token: str) -> bool:
    return token[0].isdigit()


def _sorted(values: set[int]) -> Hashes:
    return np.unique(np.fromiter(values, dtype=np.int64, count=len(values)))
