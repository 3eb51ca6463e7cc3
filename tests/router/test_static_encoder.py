"""The shipped static encoder reads the tokenizer's ids exactly as the plain batch call gives them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.artifact import default_artifact_dir
from router.encoders.base import clip_texts
from router.encoders.static import StaticEncoder

ENCODER = StaticEncoder.from_dir(default_artifact_dir())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=400), min_size=1, max_size=6))
def test_the_fast_batch_gives_the_ids_of_the_plain_batch(texts: list[str]) -> None:
    plain = ENCODER.tokenizer.encode_batch(clip_texts(texts), add_special_tokens=False)
    assert ENCODER.token_ids(texts) == [e.ids[: ENCODER.max_tokens] for e in plain]
