"""Train the shipped artifact from the routing data: `rightsize train --data DIR`."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from router.artifact import write_manifest
from router.encoders.base import Encoder
from router.encoders.sentence_transformer import DEFAULT_MODEL
from router.encoders.static import TABLE_FILE, TOKENIZER_FILE, StaticEncoder
from router.estimate import CATEGORIES
from router.features import FEATURE_NAMES, LATEST_FEATURE_SET, features_batch
from router.heads import Heads
from router.training.card import write_model_card
from router.training.dataset import RoutingRecord, load_split
from router.training.embedding_cache import cached_encode
from router.training.evaluate import Predictions, evaluate
from router.training.fit import FitConfig, fit_heads
from router.training.targets import (
    BUDGET_SOURCES,
    EVAL_PAIRS,
    build_targets,
    pair_label,
    weak_pool,
)

STATIC_HEADS = "heads_static.json"
TRANSFORMER_HEADS = "heads_transformer.json"


@dataclass(frozen=True)
class TrainOptions:
    """What to build; defaults reproduce the shipped artifact."""

    out_dir: Path
    date: str
    default_runtime: str = "static"
    static_dims: int = 128
    static_max_tokens: int = 512
    transformer_model: str = DEFAULT_MODEL
    transformer_max_seq_length: int = 256
    with_transformer: bool = True
    reuse_static_from: Path | None = None  # skip distillation, copy this artifact's table
    cache_dir: Path | None = Path(".cache/embeddings")
    fit: FitConfig = field(default_factory=FitConfig)


def pair_labels(records: Sequence[RoutingRecord]) -> npt.NDArray[np.float64]:
    """Pairwise weak-fails-strong-succeeds labels, NaN where the source has no pair."""
    return np.array(
        [np.nan if (v := pair_label(r)) is None else v for r in records],
        dtype=np.float64,
    )


def _static_encoder(prompts: list[str], options: TrainOptions) -> StaticEncoder:
    if options.reuse_static_from is not None:
        return StaticEncoder.from_dir(options.reuse_static_from, options.static_max_tokens)
    from router.training.distill import distill_static

    return distill_static(prompts, options.transformer_model, dims=options.static_dims)


def predictions(
    name: str,
    heads: Heads,
    embeddings: npt.NDArray[np.float32],
    records: Sequence[RoutingRecord],
) -> Predictions:
    """Router outputs on records as arrays, for evaluation."""
    x = heads.design(embeddings, features_batch([r.prompt for r in records], heads.feature_set))
    cats = heads.category(x)
    p50, p90 = heads.budget(x, cats)
    return Predictions(name, heads.demand(x, cats), p50, np.maximum(p50, p90))


def _encode(
    encoder: Encoder, prompts: list[str], options: TrainOptions, cacheable: bool
) -> npt.NDArray[np.float32]:
    return cached_encode(encoder, prompts, options.cache_dir if cacheable else None)


def train_artifact(data_dir: str | Path, options: TrainOptions) -> dict[str, Any]:
    """Fit every head set, write the artifact and its model card, return the manifest."""
    train = load_split(data_dir, "train")
    dev_path = Path(data_dir) / "dev.jsonl.gz"
    dev = load_split(data_dir, "dev") if dev_path.exists() else []
    prompts = [r.prompt for r in train]
    pool = weak_pool(train)
    targets = build_targets(train, pool)
    labels = pair_labels(train)
    features = features_batch(prompts)
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)

    encoders: list[tuple[str, Encoder, str, bool]] = []
    static = _static_encoder(prompts, options)
    if (
        options.reuse_static_from is not None
        and options.reuse_static_from.resolve() != out.resolve()
    ):
        for name in (TABLE_FILE, TOKENIZER_FILE):
            shutil.copyfile(options.reuse_static_from / name, out / name)
    elif options.reuse_static_from is None:
        static.save(out)
        static = StaticEncoder.from_dir(
            out, options.static_max_tokens
        )  # use the stored float16 table
    encoders.append(("static", static, STATIC_HEADS, False))
    if options.with_transformer:
        from router.encoders.sentence_transformer import SentenceTransformerEncoder

        st = SentenceTransformerEncoder(
            options.transformer_model, options.transformer_max_seq_length
        )
        encoders.append(("transformer", st, TRANSFORMER_HEADS, True))

    dev_tables: dict[str, list[dict[str, object]]] = {}
    for kind, encoder, heads_file, cacheable in tqdm(
        encoders, desc="train heads", unit="runtime", disable=None
    ):
        heads = fit_heads(
            _encode(encoder, prompts, options, cacheable),
            features,
            targets,
            labels,
            options.fit,
            FEATURE_NAMES,
            feature_set=LATEST_FEATURE_SET,
        )
        heads.save(out / heads_file)
        if dev:
            dev_emb = _encode(encoder, [r.prompt for r in dev], options, cacheable)
            dev_tables[kind] = evaluate(train, dev, predictions("router", heads, dev_emb, dev))

    manifest: dict[str, Any] = {
        "format_version": 3,
        "created": options.date,
        "default_runtime": options.default_runtime,
        "categories": list(CATEGORIES),
        # The newest set's names; each runtime's feature_set says which set its heads read.
        "feature_names": list(FEATURE_NAMES),
        "static": {
            "heads": STATIC_HEADS,
            "dims": static.dim,
            "max_tokens": options.static_max_tokens,
            "distilled_from": options.transformer_model,
            "feature_set": LATEST_FEATURE_SET,
        },
        "transformer": {
            "heads": TRANSFORMER_HEADS if options.with_transformer else None,
            "model": options.transformer_model,
            "max_seq_length": options.transformer_max_seq_length,
            "feature_set": LATEST_FEATURE_SET if options.with_transformer else None,
        },
        "training": {
            "records": dict(sorted(Counter(r.source for r in train).items())),
            "dev_records": dict(sorted(Counter(r.source for r in dev).items())),
            "weak_pool": pool,
            "eval_pairs": {k: list(v) for k, v in EVAL_PAIRS.items()},
            "budget_targets": {
                k: {"models": list(m), "scale": f} for k, (m, f) in BUDGET_SOURCES.items()
            },
            "fit": vars(options.fit),
        },
    }
    write_manifest(out, manifest)
    write_model_card(out, manifest, dev_tables)
    return manifest
