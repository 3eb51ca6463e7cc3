"""Compare demand-head variants on the dev split: in distribution, per held-out source, and
per held-out MMLU-Pro subject group (the closest thing here to an unseen knowledge set).

Usage: python benchmarks/router_demand_variants.py --data DIR [--weights 0,0.5,1]
    [--knowledge-embedding 0,0.2] [--math-embedding 0,0.1] [--neighbour-k 0,20]
A variant is FitConfig.demand_category_weight (0: one demand vector shared by every category)
with the column weights of the embedding in the knowledge and math rows
(FitConfig.demand_category_embedding; 0: features only) and the number of neighbours whose
mean demand the knowledge row reads (FitConfig.demand_neighbour_k; 0: none), every
combination of the lists.
Static embeddings of the shipped artifact; the heads are refitted for every variant and fold.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import numpy as np

from router import Router
from router.features import FEATURE_NAMES, features_batch
from router.training.crossval import leave_one_source_out
from router.training.dataset import RoutingRecord, load_split
from router.training.evaluate import score_rows, source_groups
from router.training.fit import FitConfig, fit_heads
from router.training.targets import build_targets, weak_pool
from router.training.train import pair_labels, predictions

SUBJECT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("chemistry", "physics"),
    ("engineering", "computer science"),
    ("business", "economics"),
    ("biology", "psychology"),
    ("math",),
)


def _subject(record: RoutingRecord) -> str:
    return str(record.meta.get("subject", "")) if record.source == "mmlu_pro" else ""


def _fit_and_score(
    train: Sequence[RoutingRecord],
    keep: np.ndarray,
    emb: tuple[np.ndarray, np.ndarray],
    feats: np.ndarray,
    dev: Sequence[RoutingRecord],
    config: FitConfig,
    groups: dict[str, list[int]],
) -> list[dict[str, object]]:
    kept = [r for r, k in zip(train, keep, strict=True) if k]
    heads = fit_heads(
        emb[0][keep],
        feats[keep],
        build_targets(kept, weak_pool(kept)),
        pair_labels(kept),
        config,
        FEATURE_NAMES,
    )
    return score_rows(dev, [predictions("router", heads, emb[1], dev)], groups)


def _by_group(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """The router's row of each group (baseline rows left out)."""
    return {str(r["group"]): r for r in rows if str(r["method"]).startswith("router")}


def _cell(row: dict[str, object], key: str) -> str:
    value = row.get(key)
    return "" if value is None else f"{float(str(value)):.3f}"


def main() -> None:
    """Print one markdown table per validation scheme."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", default="0,1", help="demand_category_weight values")
    for name in ("knowledge", "math"):
        parser.add_argument(
            f"--{name}-embedding",
            default=None,
            help=f"column weights of the embedding in the {name} row (default: the shipped one)",
        )
    parser.add_argument(
        "--neighbour-k",
        default=None,
        help="FitConfig.demand_neighbour_k values (0: no neighbour column; default: shipped)",
    )
    args = parser.parse_args()
    shipped = FitConfig()
    shipped_emb = dict(shipped.demand_category_embedding)

    def weights(name: str) -> list[float]:
        given = getattr(args, f"{name}_embedding")
        return [float(v) for v in given.split(",")] if given else [shipped_emb.get(name, 0.0)]

    neighbour_ks = (
        [int(v) for v in args.neighbour_k.split(",")]
        if args.neighbour_k
        else [shipped.demand_neighbour_k]
    )
    variants = {}
    for w, k, m, nk in itertools.product(
        (float(v) for v in args.weights.split(",")),
        weights("knowledge"),
        weights("math"),
        neighbour_ks,
    ):
        is_shipped = (w, k, m, nk) == (
            shipped.demand_category_weight,
            shipped_emb.get("knowledge", 0.0),
            shipped_emb.get("math", 0.0),
            shipped.demand_neighbour_k,
        )
        name = f"category weight {w:g}, embedding: knowledge {k:g}, math {m:g}, neighbours k {nk}"
        variants[name + (" (shipped)" if is_shipped else "")] = FitConfig(
            demand_category_weight=w,
            demand_category_embedding=tuple(
                (c, e) for c, e in (("knowledge", k), ("math", m)) if e
            ),
            demand_neighbour_k=nk,
        )
    train, dev = load_split(args.data, "train"), load_split(args.data, "dev")
    encoder = Router.load(runtime="static", cache_size=0).encoder
    emb = (encoder.encode([r.prompt for r in train]), encoder.encode([r.prompt for r in dev]))
    feats = features_batch([r.prompt for r in train])
    everything = np.ones(len(train), dtype=bool)

    print("In distribution (dev):\n")
    print("| variant | mmlu_pro apgr | bbh apgr | overall apgr | overall auc | math rho_level |")
    print("|---|---|---|---|---|---|")
    for name, config in variants.items():
        rows = _by_group(
            _fit_and_score(train, everything, emb, feats, dev, config, source_groups(dev))
        )
        print(
            f"| {name} | {_cell(rows['mmlu_pro'], 'apgr')} | {_cell(rows['bbh'], 'apgr')} | "
            f"{_cell(rows['overall'], 'apgr')} | {_cell(rows['overall'], 'auc')} | "
            f"{_cell(rows['math'], 'rho_level')} |"
        )

    print("\nLeave one source out (heads refitted without the source):\n")
    print("| variant | bbh apgr | mmlu_pro apgr | math rho_level |")
    print("|---|---|---|---|")
    for name, config in variants.items():
        loso = _by_group(leave_one_source_out(encoder, train, dev, config, cache_dir=None))
        print(
            f"| {name} | {_cell(loso['bbh'], 'apgr')} | {_cell(loso['mmlu_pro'], 'apgr')} | "
            f"{_cell(loso['math'], 'rho_level')} |"
        )

    print("\nLeave one MMLU-Pro subject group out (APGR on that group's dev questions):\n")
    print("| variant | " + " | ".join(" + ".join(g) for g in SUBJECT_GROUPS) + " | mean |")
    print("|---|" + "---|" * (len(SUBJECT_GROUPS) + 1))
    train_subject = np.array([_subject(r) for r in train])
    for name, config in variants.items():
        cells, apgrs = [], []
        for group in SUBJECT_GROUPS:
            keep = ~np.isin(train_subject, group)
            idx = [i for i, r in enumerate(dev) if _subject(r) in group]
            rows = _fit_and_score(train, keep, emb, feats, dev, config, {"held out": idx})
            cells.append(_cell(rows[0], "apgr"))
            apgrs.append(float(str(rows[0]["apgr"])))
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(apgrs):.3f} |")


if __name__ == "__main__":
    main()
