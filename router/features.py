"""Hand-crafted prompt features that transfer across sources better than embeddings alone.

Two feature sets; a heads file records the one it was fitted on (absent: set 1), and the
router computes that one, so heads fitted on either keep loading:

- Set 1 (the 2026-12-02 artifact): patterns on the lower-cased text; options are lines
  labelled a. to j. or (a) to (j), MMLU-Pro's layout; upper_share reads case.
- Set 2 (2026-12-03): patterns on a normalised text (lower-cased, each line's whitespace
  collapsed to single spaces, blank lines dropped) with the options' labels cut; options in
  any layout and count; no upper_share. The encoder is uncased and blind to whitespace, so a
  prompt's case, spacing and option layout move no estimate (tests/router/test_metamorphic.py).
"""

from __future__ import annotations

import math
import re

import numpy as np
import numpy.typing as npt

# Keyword patterns run on the lower-cased text without re.IGNORECASE, which is several times
# slower in Python's regex engine; these features sit on the request path.
_KEYWORDS: dict[str, re.Pattern[str]] = {
    "prove": re.compile(r"\b(?:prove|proof|show that|demonstrate that|derive)\b"),
    "step_by_step": re.compile(r"step[- ]by[- ]step|explain your reasoning|reason"),
    "explain": re.compile(r"\b(?:explain|why|analy[sz]e|compare|discuss|evaluate)\b"),
    "compute": re.compile(
        r"\b(?:calculate|compute|solve|how many|how much|find|what is the value)\b"
    ),
    "write": re.compile(r"\b(?:write|draft|compose|create|generate|implement|build|design)\b"),
    "short_task": re.compile(
        r"\b(?:translate|summari[sz]e|rephrase|rewrite|list|classify|extract)\b"
    ),
}
# Set 2 reads keywords on word boundaries: "reason" inside "reasonable price" once raised
# demand 0.077 -> 0.108.
_KEYWORDS_2: dict[str, re.Pattern[str]] = {
    **_KEYWORDS,
    "step_by_step": re.compile(
        r"\b(?:step[- ]by[- ]step|explain your reasoning|reason(?:s|ed|ing)?)\b"
    ),
}
_COUNTS: dict[str, re.Pattern[str]] = {
    # The lookahead on each alternative's first character matches the same text about three
    # times faster: Python's engine otherwise tries all seven alternatives at every position.
    "code": re.compile(
        r"(?=[`dcirf;{}])(?:```|\bdef |\bclass |\bimport |\breturn\b|;\s*$|[{}]|\bfunction\b)",
        re.MULTILINE,
    ),
    "latex": re.compile(r"\$|\\frac|\\sqrt|\\sum|\\int|\\cdot|\\le|\\ge|\^"),
    "question": re.compile(r"\?"),
    "number": re.compile(r"\d+(?:\.\d+)?"),
    "math_symbol": re.compile(r"[=+\-*/<>%\u00d7\u00f7\u221a\u2211\u222b\u03c0]"),
    "sentence": re.compile(r"[.!?](?:\s|$)"),
    "digit": re.compile(r"\d"),
}
_UPPER = re.compile(r"[A-Z]")
# Set 1's multiple-choice option lines ("A. ...", "(b) ...") with their text, on the
# lower-cased prompt. [ \t]*, not \s*: at every line start \s* would run across all the blank
# lines after it, which made a prompt of newlines quadratic (20 KB took 12 s).
_OPTION_LINE_1 = re.compile(r"^[ \t]*\(?[a-j][.)]\s(.*)$", re.MULTILINE)
# Set 2's option lines, on the normalised prompt (lines start with their label, one space
# after it). Any layout and count: "A." / "a)" / "(a)" up to z, "1)" / "(1)" up to 99, and
# check boxes "- [ ]" / "* [x]". "1." is left out: in chat traffic it numbers the steps or
# parts of a request far more often than it offers choices.
_OPTION_LINE_2 = re.compile(
    r"^(?:\((?:[a-z]|\d{1,2})\)|[a-z][.)]|\d{1,2}\)|[-*] \[[ x]\]) (.*)$", re.MULTILINE
)
_HAS_DIGIT = re.compile(r"\d")

# Patterns are matched in the first FEATURE_WINDOW_CHARS characters only, and counts scaled
# to the whole prompt, so a 4 MB prompt costs what a 32 KB one does in the router's shared
# worker thread (every request waits on it). The longest training prompt has 27,586
# characters: features of every prompt the heads were fitted on are exact.
FEATURE_WINDOW_CHARS = 32_000

_NAMES_1: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_sentences",
    "log_numbers",
    "digit_share",
    "math_symbol_share",
    "upper_share",
    "has_prove",
    "has_step_by_step",
    "has_explain",
    "has_compute",
    "has_write",
    "has_short_task",
    "log_code_markers",
    "log_latex",
    "log_options",
    "log_questions",
    "log_stem_chars",
    "log_option_chars",
    "numeric_option_share",
)
FEATURE_SETS: dict[int, tuple[str, ...]] = {
    1: _NAMES_1,
    2: tuple(name for name in _NAMES_1 if name != "upper_share"),
}
# What training fits new heads on.
LATEST_FEATURE_SET = 2
FEATURE_NAMES = FEATURE_SETS[LATEST_FEATURE_SET]


class UnknownFeatureSetError(ValueError):
    """Heads ask for a feature set this code does not compute."""


def feature_names(feature_set: int) -> tuple[str, ...]:
    """The names of one feature set's columns, in order."""
    try:
        return FEATURE_SETS[feature_set]
    except KeyError:
        raise UnknownFeatureSetError(
            f"feature set {feature_set!r} is not one this code computes "
            f"({', '.join(map(str, FEATURE_SETS))})"
        ) from None


def prompt_features(text: str, feature_set: int = LATEST_FEATURE_SET) -> npt.NDArray[np.float32]:
    """Return the fixed-length feature vector of one prompt (see FEATURE_SETS)."""
    feature_names(feature_set)  # refuses an unknown set
    window = text[:FEATURE_WINDOW_CHARS]
    scale = len(text) / len(window) if len(text) > len(window) else 1.0

    def log_total(count: float) -> float:
        """log1p of a count in the window, scaled to the whole prompt."""
        return math.log1p(count * scale)

    if feature_set == 1:
        body = window.lower()
        keywords = _KEYWORDS
        matches = list(_OPTION_LINE_1.finditer(body))
        option_span = sum(m.end() - m.start() + 1 for m in matches)
        sizes = [
            math.log1p(len(text)),
            log_total(len(window.split())),
            math.log1p(text.count("\n") + 1),
        ]
        n_options = len(_OPTIONS_1.findall(body))
        # Set 1 measured the stem on the raw text: the prompt less its option lines.
        stem = math.log1p(max(len(text) - option_span * scale, 0))
    else:
        lines = normalised_lines(window)
        joined = "\n".join(lines)
        keywords = _KEYWORDS_2
        matches = list(_OPTION_LINE_2.finditer(joined))
        # Every other feature reads the text without the options' labels: "(a) 12", "A. 12"
        # and "1) 12" offer the same option, and a label's digits or full stop are not the
        # question's.
        body = _without_labels(joined, matches)
        sizes = [
            log_total(len(body)),
            log_total(len(body.split())),
            log_total(max(len(lines), 1)),
        ]
        n_options = len(matches)
        option_text = sum(len(m.group(1)) for m in matches)
        stem = log_total(max(len(body) - option_text - len(matches), 0))
    n_chars = max(len(body), 1)
    counts = {name: len(pattern.findall(body)) for name, pattern in _COUNTS.items()}
    has = {name: float(pattern.search(body) is not None) for name, pattern in keywords.items()}
    options = [m.group(1) for m in matches]
    option_chars = sum(len(o) for o in options)
    # What a multiple-choice question asks (its stem) and what it offers carry different
    # signals: on MMLU-Pro a longer stem and numeric options go with small-model failures,
    # longer options with fewer (docs/router.md); without options the stem is the prompt.
    values = [
        *sizes,
        log_total(counts["sentence"]),
        log_total(counts["number"]),
        counts["digit"] / n_chars,
        counts["math_symbol"] / n_chars,
        *([len(_UPPER.findall(window)) / n_chars] if feature_set == 1 else []),
        has["prove"],
        has["step_by_step"],
        has["explain"],
        has["compute"],
        has["write"],
        has["short_task"],
        log_total(counts["code"]),
        log_total(counts["latex"]),
        log_total(n_options),
        log_total(counts["question"]),
        stem,
        math.log1p(option_chars / len(options)) if options else 0.0,
        sum(_HAS_DIGIT.search(o) is not None for o in options) / len(options) if options else 0.0,
    ]
    return np.asarray(values, dtype=np.float32)


# Set 1 counted option labels with their own pattern (a label followed by any whitespace,
# also a line break), which can differ from the option lines it measured.
_OPTIONS_1 = re.compile(r"^[ \t]*\(?[a-j][.)]\s", re.MULTILINE)


def _without_labels(text: str, matches: list[re.Match[str]]) -> str:
    """text with each option line's label cut (the matches are _OPTION_LINE_2's, in order)."""
    if not matches:
        return text
    parts, start = [], 0
    for match in matches:
        parts.append(text[start : match.start()])
        start = match.start(1)
    parts.append(text[start:])
    return "".join(parts)


def normalised_lines(text: str) -> list[str]:
    """The lower-cased text's non-blank lines, each with its whitespace runs made one space."""
    return [line for raw in text.lower().splitlines() if (line := " ".join(raw.split()))]


def features_batch(
    texts: list[str], feature_set: int = LATEST_FEATURE_SET
) -> npt.NDArray[np.float32]:
    """Stack prompt_features for many prompts into an (n, n_features) array."""
    if not texts:
        return np.zeros((0, len(feature_names(feature_set))), dtype=np.float32)
    return np.stack([prompt_features(t, feature_set) for t in texts])
