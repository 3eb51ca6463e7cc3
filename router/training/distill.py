"""Distil a static token table from a sentence-transformers model (training path, needs torch).

Each vocabulary token is encoded alone by the sentence model; the vectors are reduced by PCA
and down-weighted for frequent tokens (SIF weighting), in the spirit of model2vec.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from router.encoders.sentence_transformer import (
    DEFAULT_MODEL,
    embedding_dimension,
    resolve_model_path,
)
from router.encoders.static import StaticEncoder


def _token_vectors(
    model_path: str, vocab_size: int, batch_size: int = 1024
) -> npt.NDArray[np.float32]:
    """Mean-pooled sentence-model output of `[CLS] token [SEP]` for every id."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    tok = model.tokenizer
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    out = np.zeros((vocab_size, embedding_dimension(model)), dtype=np.float32)
    torch.manual_seed(0)
    with torch.inference_mode():
        for start in range(0, vocab_size, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab_size))
            input_ids = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            features = {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
            }
            if "token_type_ids" in tok.model_input_names:
                features["token_type_ids"] = torch.zeros_like(input_ids)
            emb = model(features)["token_embeddings"].mean(dim=1)
            out[start : start + len(ids)] = emb.numpy()
    return out


def _pca(matrix: npt.NDArray[np.float32], dims: int) -> npt.NDArray[np.float32]:
    """Project onto the top principal components (deterministic SVD)."""
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    return np.asarray(centred @ vt[:dims].T, dtype=np.float32)


def _local_directory(model: str) -> str:
    """A model directory as given, or a name's snapshot in the Hugging Face cache (offline)."""
    if Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download

    return str(snapshot_download(model, local_files_only=True))


def distill_static(
    corpus: list[str], model: str = DEFAULT_MODEL, dims: int = 128, sif_a: float = 1e-3
) -> StaticEncoder:
    """Build a StaticEncoder from `model`; `corpus` supplies token frequencies for SIF weights."""
    model_path = _local_directory(resolve_model_path(model))
    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
    table = _pca(_token_vectors(model_path, vocab_size), dims)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts: Counter[int] = Counter()
    for enc in tokenizer.encode_batch(corpus, add_special_tokens=False):
        counts.update(enc.ids)
    freq = np.ones(vocab_size, dtype=np.float64)  # add-one smoothing for unseen tokens
    for token_id, n in counts.items():
        freq[token_id] += n
    prob = freq / freq.sum()
    table *= (sif_a / (sif_a + prob))[:, None].astype(np.float32)
    return StaticEncoder(table, tokenizer)
