"""Multiple-choice shape features: the stem is measured apart from the options.

Set 1 is what the 2026-12-02 transformer heads read and must not move; set 2 is the newest.
"""

from __future__ import annotations

import numpy as np
import pytest

from router import features
from router.features import (
    FEATURE_SETS,
    LATEST_FEATURE_SET,
    UnknownFeatureSetError,
    feature_names,
    features_batch,
    prompt_features,
)


def _named(text: str, feature_set: int = LATEST_FEATURE_SET) -> dict[str, float]:
    values = prompt_features(text, feature_set).tolist()
    return dict(zip(feature_names(feature_set), values, strict=True))


STEM = "A 2 kg block slides down a frictionless ramp of height 5 m. What is its final speed?"


@pytest.mark.parametrize("feature_set", sorted(FEATURE_SETS))
def test_option_lines_are_split_from_the_stem(feature_set: int) -> None:
    numeric = _named(f"{STEM}\nA. 5 m/s\nB. 9.9 m/s\nC. 12 m/s\nD. 20 m/s", feature_set)
    worded = _named(
        f"{STEM}\nA. It stops\nB. It speeds up forever\nC. Nothing\nD. Unknown", feature_set
    )
    plain = _named(STEM, feature_set)
    # The stem is the same with either set of options, and equals the whole prompt without any.
    assert numeric["log_stem_chars"] == worded["log_stem_chars"]
    assert numeric["log_stem_chars"] == pytest.approx(plain["log_stem_chars"], abs=0.05)
    assert numeric["numeric_option_share"] == 1.0
    assert worded["numeric_option_share"] == 0.0
    assert worded["log_option_chars"] > numeric["log_option_chars"] > 0.0
    assert plain["log_option_chars"] == plain["numeric_option_share"] == 0.0


def test_set_1_blank_lines_before_the_options_belong_to_the_stem() -> None:
    """Option patterns stay on their own line: one that ran across blank lines (\\s* at a
    line start) made a prompt of newlines quadratic to scan (20 KB took 12 s)."""
    spaced = _named(STEM + "\n" * 50 + "A. 5 m/s\nB. 9.9 m/s", 1)
    tight = _named(STEM + "\nA. 5 m/s\nB. 9.9 m/s", 1)
    assert spaced["log_options"] == tight["log_options"] > 0.0
    assert spaced["log_stem_chars"] > tight["log_stem_chars"]


def test_set_1_reads_case_and_only_letter_labels_up_to_j() -> None:
    """The 2026-12-02 transformer heads were fitted on exactly this reading."""
    assert _named("WHAT IS 2+2?", 1)["upper_share"] > 0.0
    twelve = "\n".join(f"{chr(97 + i)}) choice {i}" for i in range(12))
    assert _named(f"{STEM}\n{twelve}", 1)["log_options"] == pytest.approx(np.log1p(10))
    assert _named(f"{STEM}\n1) one\n2) two", 1)["log_options"] == 0.0


def test_set_2_blank_lines_spacing_and_case_change_no_feature() -> None:
    """Whitespace and case say nothing of a question, so they move no feature at all."""
    spaced = prompt_features(
        STEM.replace(" ", "   ").upper() + "\n" * 50 + "  A.  5 m/s\n\tB. 9.9 m/s \n", 2
    )
    tight = prompt_features(STEM + "\nA. 5 m/s\nB. 9.9 m/s", 2)
    assert spaced.tolist() == tight.tolist()
    assert _named(STEM + "\nA. 5 m/s\nB. 9.9 m/s", 2)["log_options"] > 0.0
    assert "upper_share" not in feature_names(2)


def test_set_2_options_of_any_count_and_label_are_counted() -> None:
    twelve = "\n".join(f"{chr(97 + i)}) choice {i}" for i in range(12))
    checkboxes = "\n".join(f"- [ ] choice {i}" for i in range(3))
    assert _named(f"{STEM}\n{twelve}", 2)["log_options"] == pytest.approx(np.log1p(12))
    assert _named(f"{STEM}\n{checkboxes}", 2)["log_options"] == pytest.approx(np.log1p(3))


def test_set_2_reads_the_same_options_in_every_layout() -> None:
    layouts = [
        "A. 5 m/s\nB. 9.9 m/s",
        "(a) 5 m/s\n(b) 9.9 m/s",
        "1) 5 m/s\n2) 9.9 m/s",
        "(1) 5 m/s\n(2) 9.9 m/s",
    ]
    rows = [prompt_features(f"{STEM}\n{layout}", 2).tolist() for layout in layouts]
    assert all(row == rows[0] for row in rows)


def test_set_2_a_numbered_list_is_not_read_as_options() -> None:
    steps = "Do three things:\n1. read the file\n2. count the words\n3. print the count"
    assert _named(steps, 2)["log_options"] == 0.0


def test_set_2_a_keyword_inside_a_longer_word_is_not_the_keyword() -> None:
    assert _named("Is this a reasonable price?", 2)["has_step_by_step"] == 0.0
    assert _named("Is this a reasonable price?", 1)["has_step_by_step"] == 1.0
    assert _named("Give your reasoning.", 2)["has_step_by_step"] == 1.0


def test_an_unknown_feature_set_is_refused_by_name() -> None:
    with pytest.raises(UnknownFeatureSetError, match="feature set 9"):
        features_batch(["hello"], 9)


@pytest.mark.parametrize("feature_set", sorted(FEATURE_SETS))
def test_a_prompt_longer_than_the_window_has_its_counts_scaled_from_the_window(
    monkeypatch: pytest.MonkeyPatch, feature_set: int
) -> None:
    block = f"{STEM} Explain why, step by step.\nA. 5 m/s\nB. 9.9 m/s\n```\ndef f(x):\n    return x\n```\n"
    text = block * (3 * features.FEATURE_WINDOW_CHARS // len(block))
    windowed = prompt_features(text, feature_set)
    monkeypatch.setattr(features, "FEATURE_WINDOW_CHARS", len(text))
    exact = prompt_features(text, feature_set)
    # Every count, share and length of a prompt that repeats itself extrapolates from the
    # window to within rounding at the window's edge.
    # Without the scaling the log counts would be log(3) ~ 1.1 short.
    assert windowed == pytest.approx(exact, abs=0.01)


def test_the_encoder_reads_check_box_options_as_lettered_ones() -> None:
    from router.router import encoder_text

    boxed = "Which is prime?\n- [ ] 21\n- [x] 29\n  [ ] 33\nNote: [ ] inline stays."
    assert encoder_text(boxed) == "Which is prime?\nA. 21\nB. 29\n  C. 33\nNote: [ ] inline stays."
    plain = "No boxes here: a list [1, 2] and - a dash."
    assert encoder_text(plain) is plain
