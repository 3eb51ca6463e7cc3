"""The semantic tier's lexical guard: what the embedding cannot see, read from the prompt's text.

The router's static embedding is a mean of token vectors: blind to word order and nearly blind
to digits and to one word in a long text, so "5 balls in 3 boxes" and "3 balls in 5 boxes"
score 1.0, and so does a 1,400-character few-shot prompt whose last question swaps "trade
school" and "university". The guard adds what it misses, from the same text the embedding is
of (no second encode):

- a signature that must match exactly: every number with the content token before it (which
  quantity it is) and how many negations the prompt holds; it becomes part of the semantic
  partition, so prompts that differ in it are never even compared;
- the prompt's words, normalised so that only differences that cannot change the answer
  disappear: casing, punctuation and spacing (not tokens), contractions ("don't" is "do not",
  "what's" is "what is"), "please", and politeness where it cannot be part of the question
  ("Hi!" or "Quick question:" opening the prompt, "could you" for "can you", a closing
  "Thanks!"). A hit must have the same normalised words in the same order: the two prompts
  are aligned, and any differing span that is left (a swap, a moved negation, a replaced or
  added word) refuses the hit, however long the text they share. Judging the differing span,
  not a share of the whole prompt, is what keeps a long shared prefix from outvoting a changed
  question (issue 17).

docs/cache.md lists the allowed differences and why each is sound.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Numbers with thousands separators or decimals; words with an optional contraction; and the
# symbols that change a calculation. Sentence punctuation, brackets and quotes are left out.
# Each token comes with the text before it (where the punctuation is): one findall, which is
# half the cost of a finditer loop on a 2,000-character prompt. The token is optional so that
# trailing text without one is a single match, not a quadratic search for a token.
_TOKEN = re.compile(
    r"((?:_|[^\w+\-*/^=<>%$])*)"
    r"(?:(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"|([^\W\d_]+(?:'[^\W\d_]+)?)"
    r"|([+\-*/^=<>%$]))?"
)
_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nor", "neither", "nobody", "nothing", "nowhere", "without"}
)
# Contractions are the same words: "don't" is "do not", so both count one negation.
_IRREGULAR_NOT = {"won't": "will", "can't": "can", "shan't": "shall", "ain't": "is"}
# The clitic after an apostrophe, as the word it stands for. "'s" is also the possessive and
# "'d" also "had": reading them as "is" and "would" can only make "Tom's" equal "Tom is", which
# no one writes in the same place; the other way round ("he's gone" / "he has gone") is a miss.
_CLITICS = {"s": "is", "m": "am", "re": "are", "ve": "have", "ll": "will", "d": "would"}
# Grammar rather than subject, for the signature's "which quantity" token only: articles,
# forms of be / do / have and modal verbs.
_FUNCTION_WORDS = frozenset(
    """a an the am is are was were be been being do does did doing done have has had having
    can could will would shall should may might must""".split()
)

# The allowed differences beyond spelling: politeness that carries no content, each only where
# it cannot be part of the question. Kept small on purpose.
# At the very start of the prompt, each followed by punctuation ("Hi!", "Quick question:"):
_OPENERS = (
    ("hi",),
    ("hello",),
    ("hey",),
    ("hi", "there"),
    ("hello", "there"),
    ("quick", "question"),
    ("i", "have", "a", "question"),
    ("help", "me", "with", "this"),
)
# Anywhere: "please" only asks politely. Removing it from a real question leaves no other real
# question ("how do you say please" is not "how do you say"), and where it stands varies more
# than any other word ("Please explain", "explain, please", "could you please explain").
_PLEASE = "please"
# At the start of a sentence or right after a request only: elsewhere "kindly" is content
# ("he spoke kindly to her").
_KINDLY = "kindly"
# At the start of a sentence, followed by "you": the same request ("Could you" is "Can you").
_REQUESTS = frozenset({"can", "could", "would"})
# At the very end of the prompt, after a comma or the end of a sentence ("..., thanks!").
# Not after a colon: "Translate into French: thank you" asks for the thanks.
_CLOSERS = (
    ("thanks",),
    ("thank", "you"),
    ("thanks", "in", "advance"),
    ("thank", "you", "in", "advance"),
)
_SENTENCE_BREAK = re.compile(r"[.?!:\n]")
_AFTER_OPENER = re.compile(r"[,.?!:;\n]")
_BEFORE_CLOSER = re.compile(r"[,.?!\n]")

Hashes = npt.NDArray[np.int64]
# The diagnosis (which reason a refusal is counted under) aligns at most this many differing
# tokens per side with difflib; beyond that it compares them as bags. The verdict never
# depends on it: a refusal is decided before, in linear time.
_ALIGN_AT_MOST = 400


@dataclass(frozen=True, slots=True)
class PromptGuard:
    """A prompt's exact-match signature and its normalised words (hashed, in order)."""

    signature: str
    words: Hashes

    def refuses(self, other: PromptGuard) -> str | None:
        """Why `other` may not answer for this prompt, or None: "word_order" (the same words
        moved, e.g. two phrases swapped), "words_replaced" or "words_added".

        Every differing span refuses, whatever share of the prompt it is (the retired
        `cache.semantic.min_word_order_overlap` set such a share). The signature is checked by
        the caller (it is part of the semantic partition)."""
        if np.array_equal(self.words, other.words):
            return None
        return _difference(self.words, other.words)


def prompt_guard(text: str) -> PromptGuard:
    """The guard of one prompt (the text the router embeds)."""
    # From the normalised words, so that "Quick question: 2 + 2?" keeps the partition of "2 + 2?".
    words = _normalised(_tokens(text))
    kept = [w for w in words if w not in _FUNCTION_WORDS]
    # Each number with the content token before it, as a multiset: the same numbers attached
    # to the same things, whatever the order of the sentences they sit in.
    numbers = sorted(f"{kept[i - 1] if i else ''} {w}" for i, w in enumerate(kept) if _number(w))
    negations = sum(w in _NEGATIONS for w in words)
    material = "\x1f".join([str(negations), *numbers]).encode()
    signature = hashlib.blake2b(material, digest_size=12).hexdigest()
    # Python's hash: the index lives in this process, so the values need not be stable.
    hashed = np.fromiter(map(hash, words), dtype=np.int64, count=len(words))
    return PromptGuard(signature, hashed)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Each token with the text between it and the token before (where the punctuation is)."""
    found: list[tuple[str, str]] = []
    # casefold, not lower: "Fußball" upper-cased is "FUSSBALL", and both fold to "fussball".
    for gap, number, word, symbol in _TOKEN.findall(text.casefold().replace("\u2019", "'")):
        if word:
            if "'" not in word and word != "cannot":
                found.append((word, gap))
                continue
            if word.endswith("n't"):
                base = _IRREGULAR_NOT.get(word, word[:-3])
                parts = [base, "not"] if base else ["not"]  # "n't" alone, as tokenisers write it
            elif word == "cannot":
                parts = ["can", "not"]
            else:
                head, *clitics = word.split("'")
                parts = [head, *(_CLITICS.get(c, c) for c in clitics)]
            found.append((parts[0], gap))
            found += [(part, "") for part in parts[1:]]
        elif number or symbol:
            found.append((number.replace(",", "") if number else symbol, gap))
    return found


def _normalised(found: list[tuple[str, str]]) -> list[str]:
    """The words with the allowed differences taken out (module docstring, docs/cache.md)."""
    words = [token for token, _ in found]
    gaps = [gap for _, gap in found]
    start, end = 0, len(words)
    # Openers and courtesy words at the start, in any order; never the whole prompt.
    while start < end:
        if words[start] in (_PLEASE, _KINDLY) and start + 1 < end:
            start += 1
            continue
        opener = next(
            (
                len(phrase)
                for phrase in _OPENERS
                if start + len(phrase) < end
                and tuple(words[start : start + len(phrase)]) == phrase
                and _AFTER_OPENER.search(gaps[start + len(phrase)])
            ),
            0,
        )
        if not opener:
            break
        start += opener
    closed = True
    while closed:
        closed = False
        for phrase in _CLOSERS:
            first = end - len(phrase)
            if (
                first > start
                and tuple(words[first:end]) == phrase
                and _BEFORE_CLOSER.search(gaps[first])
            ):
                end, closed = first, True
                break
    kept: list[str] = []
    opening = True  # the next word starts a sentence or follows a request
    i = start
    while i < end:
        word = words[i]
        if i > start and _SENTENCE_BREAK.search(gaps[i]):
            opening = True
        if word == _PLEASE or (opening and word == _KINDLY):
            i += 1
            continue
        if opening and word in _REQUESTS and i + 1 < end and words[i + 1] == "you":
            kept += ["can", "you"]
            i += 2
            continue  # still opening: "could you please explain"
        kept.append(word)
        opening = False
        i += 1
    return kept


def _difference(a: Hashes, b: Hashes) -> str:
    """The reason two different word sequences differ, from the spans that do not align."""
    shorter = min(len(a), len(b))
    head = _common_run(a[:shorter], b[:shorter])
    tail = _common_run(a[::-1][: shorter - head], b[::-1][: shorter - head])
    left, right = a[head : len(a) - tail].tolist(), b[head : len(b) - tail].tolist()
    removed: list[int] = []
    added: list[int] = []
    replaced = bool(left and right)
    if replaced and max(len(left), len(right)) <= _ALIGN_AT_MOST:
        replaced = False
        matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            removed += left[i1:i2] if tag != "equal" else []
            added += right[j1:j2] if tag != "equal" else []
            replaced = replaced or tag == "replace"
    else:
        removed, added = left, right
    if Counter(removed) == Counter(added):
        return "word_order"
    return "words_replaced" if replaced else "words_added"


def _common_run(a: Hashes, b: Hashes) -> int:
    """How many leading elements two equally long arrays share."""
    differs = np.flatnonzero(a != b)
    return int(differs[0]) if len(differs) else len(a)


def _number(token: str) -> bool:
    return token[0].isdigit()
