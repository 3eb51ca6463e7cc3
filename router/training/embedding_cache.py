"""Disk cache of dataset embeddings so retraining does not re-run the encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from router.encoders.base import Encoder


def _key(encoder_name: str, texts: list[str]) -> str:
    digest = hashlib.sha256(encoder_name.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:24]


def cached_encode(
    encoder: Encoder, texts: list[str], cache_dir: Path | None, batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Encode texts in batches, reusing `<cache_dir>/<hash>.npy` when present."""
    path = cache_dir / f"{_key(encoder.name, texts)}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    # Sorting by length keeps padded batches short on transformer runtimes.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    # A bar on a terminal only (disable=None): minutes for a dataset on the transformer runtime.
    with tqdm(
        total=len(texts), desc=f"encode ({encoder.name})", unit="prompt", disable=None
    ) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = encoder.encode([texts[i] for i in idx])
            bar.update(len(idx))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out, allow_pickle=False)
    return out
