"""Hand-crafted prompt features that transfer across sources better than embeddings alone."""

from __future__ import annotations

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
_COUNTS: dict[str, re.Pattern[str]] = {
    # The lookahead on each alternative's first character matches the same text about three
    # times faster: Python's engine otherwise tries all seven alternatives at every position.
    "code": re.compile(
        r"(?=[`dcirf;{}])(?:```|\bdef |\bclass |\bimport |\breturn\b|;\s*$|[{}]|\bfunction\b)",
        re.MULTILINE,
    ),
    "latex": re.compile(r"\$|\\frac|\\sqrt|\\sum|\\int|\\cdot|\\le|\\ge|\^"),
    # [ \t]*, not \s*: at every line start \s* would run across all the blank lines after
    # it, which made a prompt of newlines quadratic (20 KB took 12 s).
    "options": re.compile(r"^[ \t]*\(?[a-j][.)]\s", re.MULTILINE),
    "question": re.compile(r"\?"),
    "number": re.compile(r"\d+(?:\.\d+)?"),
    "math_symbol": re.compile(r"[=+\-*/<>%\u00d7\u00f7\u221a\u2211\u222b\u03c0]"),
    "sentence": re.compile(r"[.!?](?:\s|$)"),
    "digit": re.compile(r"\d"),
}
_UPPER = re.compile(r"[A-Z]")
# Multiple-choice option lines ("A. ...", "(b) ...") with their text, on the lower-cased prompt.
_OPTION_LINE = re.compile(r"^[ \t]*\(?[a-j][.)]\s(.*)$", re.MULTILINE)
_HAS_DIGIT = re.compile(r"\d")

# Patterns are matched in the first FEATURE_WINDOW_CHARS characters only, and counts scaled
# to the whole prompt, so a 4 MB prompt costs what a 32 KB one does in the router's shared
# worker thread (every request waits on it). The longest training prompt has 27,586
# characters: features of every prompt the heads were fitted on are exact.
FEATURE_WINDOW_CHARS = 32_000

FEATURE_NAMES: tuple[str, ...] = (
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


def prompt_features(text: str) -> npt.NDArray[np.float32]:
    """Return the fixed-length feature vector of one prompt (see FEATURE_NAMES)."""
    window = text[:FEATURE_WINDOW_CHARS]
    scale = len(text) / len(window) if len(text) > len(window) else 1.0
    n_chars = max(len(window), 1)
    lower = window.lower()
    counts = {name: len(pattern.findall(lower)) for name, pattern in _COUNTS.items()}
    has = {name: float(pattern.search(lower) is not None) for name, pattern in _KEYWORDS.items()}
    matches = list(_OPTION_LINE.finditer(lower))
    options = [m.group(1) for m in matches]
    option_chars = sum(len(o) for o in options)
    # What a multiple-choice question asks (its stem) and what it offers carry different
    # signals: on MMLU-Pro a longer stem and numeric options go with small-model failures,
    # longer options with fewer (docs/router.md); without options the stem is the prompt.
    option_span = sum(m.end() - m.start() + 1 for m in matches)
    stem_chars = max(len(text) - option_span * scale, 0)

    def log_total(count: int) -> float:
        """log1p of a count in the window, scaled to the whole prompt."""
        return float(np.log1p(count * scale))

    values = [
        np.log1p(len(text)),
        log_total(len(window.split())),
        np.log1p(text.count("\n") + 1),
        log_total(counts["sentence"]),
        log_total(counts["number"]),
        counts["digit"] / n_chars,
        counts["math_symbol"] / n_chars,
        len(_UPPER.findall(window)) / n_chars,
        has["prove"],
        has["step_by_step"],
        has["explain"],
        has["compute"],
        has["write"],
        has["short_task"],
        log_total(counts["code"]),
        log_total(counts["latex"]),
        log_total(counts["options"]),
        log_total(counts["question"]),
        np.log1p(stem_chars),
        np.log1p(option_chars / len(options)) if options else 0.0,
        sum(_HAS_DIGIT.search(o) is not None for o in options) / len(options) if options else 0.0,
    ]
    return np.asarray(values, dtype=np.float32)


def features_batch(texts: list[str]) -> npt.NDArray[np.float32]:
    """Stack prompt_features for many prompts into an (n, n_features) array."""
    if not texts:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([prompt_features(t) for t in texts])
