"""The shipped static encoder reads the tokenizer's ids exactly as the plain batch call gives them,
its word memo for ASCII texts included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.artifact import default_artifact_dir
from router.encoders import static
from router.encoders.base import clip_texts
from router.encoders.static import StaticEncoder

ENCODER = StaticEncoder.from_dir(default_artifact_dir())
assert ENCODER._bert_ascii  # the shipped tokenizer takes the word memo for ASCII texts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=400), min_size=1, max_size=6))
def test_the_fast_batch_gives_the_ids_of_the_plain_batch(texts: list[str]) -> None:
    plain = ENCODER.tokenizer.encode_batch(clip_texts(texts), add_special_tokens=False)
    assert ENCODER.token_ids(texts) == [e.ids[: ENCODER.max_tokens] for e in plain]


_ASCII_PIECES = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=30),
    st.sampled_from(
        ["[CLS]", "[MASK]", "[cls]", "[SEP", "don't", "e.g.", "Hello", "x" * 120, " \t\r\n\x0b\x0c"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_ASCII_PIECES, max_size=12).map("".join), min_size=1, max_size=4))
def test_ascii_texts_read_through_the_word_memo_give_the_tokenizers_ids(texts: list[str]) -> None:
    """The memo's words are the normalizer's and pre-tokenizer's: control characters, the
    whitespace kinds, punctuation, over-long words and the added tokens ("[CLS]") included."""
    plain = ENCODER.tokenizer.encode_batch(clip_texts(texts), add_special_tokens=False)
    assert ENCODER.token_ids(texts) == [e.ids[: ENCODER.max_tokens] for e in plain]


def test_ascii_prompts_take_the_word_memo_and_others_the_tokenizer() -> None:
    encoder = StaticEncoder.from_dir(default_artifact_dir())
    long = "Longer texts go to the tokenizer, which releases the GIL. " * 40
    texts = ["Why is the sky blue?", "Pourquoi le ciel est-il bleu ? é", "[CLS] why", long]
    plain = encoder.tokenizer.encode_batch(clip_texts(texts), add_special_tokens=False)
    assert encoder.token_ids(texts) == [e.ids[: encoder.max_tokens] for e in plain]
    assert set(encoder._words) == {"why", "is", "the", "sky", "blue", "?"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_one_text_is_encoded_bit_for_bit_as_in_a_batch(text: str) -> None:
    assert np.array_equal(ENCODER.encode([text])[0], ENCODER.encode([text, "padding row"])[0])


def test_the_word_memo_stays_bounded_and_right_when_it_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(static, "_WORDS_KEPT", 3)
    encoder = StaticEncoder.from_dir(default_artifact_dir())
    texts = [f"alpha beta gamma delta epsilon {n}" for n in range(5)]
    plain = encoder.tokenizer.encode_batch(texts, add_special_tokens=False)
    for text, expected in zip(texts, plain, strict=True):
        assert encoder.token_ids([text]) == [expected.ids]
        assert len(encoder._words) <= 3
