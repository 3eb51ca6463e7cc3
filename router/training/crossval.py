"""Leave-one-source-out validation: does what is learnt on other sources transfer?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from router.encoders.base import Encoder
from router.features import FEATURE_NAMES, LATEST_FEATURE_SET, features_batch
from router.training.dataset import RoutingRecord
from router.training.embedding_cache import cached_encode
from router.training.evaluate import Predictions, length_baseline, score_rows
from router.training.fit import FitConfig, fit_heads
from router.training.targets import build_targets, weak_pool
from router.training.train import pair_labels, predictions


def leave_one_source_out(
    encoder: Encoder,
    train: Sequence[RoutingRecord],
    dev: Sequence[RoutingRecord],
    config: FitConfig | None = None,
    cache_dir: str | None = ".cache/embeddings",
    peers: Sequence[Predictions] = (),
) -> list[dict[str, object]]:
    """For each source: fit heads on the other sources' train rows, score that source's dev rows.

    peers are other routers' predictions on every dev record; they learn nothing from this
    training split, so each held-out source reads its own rows of them beside ours.
    """
    from pathlib import Path

    cache = Path(cache_dir) if cache_dir and not encoder.name.startswith("static") else None
    train_emb = cached_encode(encoder, [r.prompt for r in train], cache)
    dev_emb = cached_encode(encoder, [r.prompt for r in dev], cache)
    features = features_batch([r.prompt for r in train])
    rows: list[dict[str, object]] = []
    sources = sorted({r.source for r in dev})
    for source in tqdm(sources, desc="leave one source out", unit="source", disable=None):
        keep = np.array([r.source != source for r in train])
        kept = [r for r, k in zip(train, keep, strict=True) if k]
        labels = pair_labels(kept)
        if np.isnan(labels).all():
            continue  # nothing left to calibrate on
        heads = fit_heads(
            train_emb[keep],
            features[keep],
            build_targets(kept, weak_pool(kept)),
            labels,
            config,
            FEATURE_NAMES,
            feature_set=LATEST_FEATURE_SET,
        )
        idx = [i for i, r in enumerate(dev) if r.source == source]
        sub = [dev[i] for i in idx]
        preds = [
            predictions("router (LOSO)", heads, dev_emb[idx], sub),
            length_baseline(kept, sub),
            *(peer.subset(idx) for peer in peers),
        ]
        rows += score_rows(sub, preds, {source: list(range(len(sub)))})
    return rows
