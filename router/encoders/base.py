"""The encoder interface every runtime implements."""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np
import numpy.typing as npt

# Characters kept before tokenising: a 1 MB prompt must not cost a 1 MB tokenisation,
# and the encoders only look at the first few hundred tokens anyway.
MAX_ENCODED_CHARS = 8_000

# A Python str may hold lone surrogates (JSON's "\ud800" decodes to one), which no tokenizer
# accepts; they are not text, so each becomes U+FFFD before encoding.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Encoder(Protocol):
    """Maps prompts to L2-normalised float32 embeddings of a fixed width."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Return an (n, dim) array of L2-normalised embeddings."""
        ...


def l2_normalise(matrix: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Scale each row to unit length (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def clip_texts(texts: list[str]) -> list[str]:
    """Cut every text to MAX_ENCODED_CHARS characters of well-formed Unicode."""
    return [_well_formed(t[:MAX_ENCODED_CHARS]) for t in texts]


def _well_formed(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text
