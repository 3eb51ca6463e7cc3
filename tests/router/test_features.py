"""Multiple-choice shape features: the stem is measured apart from the options."""

from __future__ import annotations

import pytest

from router import features
from router.features import FEATURE_NAMES, prompt_features


def _named(text: str) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, prompt_features(text).tolist(), strict=True))


STEM = "A 2 kg block slides down a frictionless ramp of height 5 m. What is its final speed?"


def test_option_lines_are_split_from_the_stem() -> None:
    numeric = _named(f"{STEM}\nA. 5 m/s\nB. 9.9 m/s\nC. 12 m/s\nD. 20 m/s")
    worded = _named(f"{STEM}\nA. It stops\nB. It speeds up forever\nC. Nothing\nD. Unknown")
    plain = _named(STEM)
    # The stem is the same with either set of options, and equals the whole prompt without any.
    assert numeric["log_stem_chars"] == worded["log_stem_chars"]
    assert numeric["log_stem_chars"] == pytest.approx(plain["log_stem_chars"], abs=0.05)
    assert numeric["numeric_option_share"] == 1.0
    assert worded["numeric_option_share"] == 0.0
    assert worded["log_option_chars"] > numeric["log_option_chars"] > 0.0
    assert plain["log_option_chars"] == plain["numeric_option_share"] == 0.0


def test_blank_lines_before_the_options_belong_to_the_stem() -> None:
    """Option patterns stay on their own line: one that ran across blank lines (\\s* at a
    line start) made a prompt of newlines quadratic to scan (20 KB took 12 s)."""
    spaced = _named(STEM + "\n" * 50 + "A. 5 m/s\nB. 9.9 m/s")
    tight = _named(STEM + "\nA. 5 m/s\nB. 9.9 m/s")
    assert spaced["log_options"] == tight["log_options"] > 0.0
    assert spaced["log_stem_chars"] > tight["log_stem_chars"]


def test_a_prompt_longer_than_the_window_has_its_counts_scaled_from_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block = f"{STEM} Explain why, step by step.\nA. 5 m/s\nB. 9.9 m/s\n```\ndef f(x):\n    return x\n```\n"
    text = block * (3 * features.FEATURE_WINDOW_CHARS // len(block))
    windowed = prompt_features(text)
    monkeypatch.setattr(features, "FEATURE_WINDOW_CHARS", len(text))
    exact = prompt_features(text)
    # Every count, share and length of a prompt that repeats itself extrapolates from the
    # window to within rounding at the window's edge.
    # Without the scaling the log counts would be log(3) ~ 1.1 short.
    assert windowed == pytest.approx(exact, abs=0.01)
