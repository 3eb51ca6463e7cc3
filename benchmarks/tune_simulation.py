"""Simulate `rightsize tune --pairs` on sources the router never saw (issue 21, Must show 1).

For each source of the routing data with pairwise outcomes, the base heads are refitted
without it (leave-one-source-out, static runtime), then `tune` is fed 5%, 20% and 50% of the
source's labelled prompts and both routers are scored on the rest, over several seeds; also
on random subsets of 300 and 72 prompts (the small held-out sets that a careless fit hurt).

    python benchmarks/tune_simulation.py --data ../shared/data/routing [--seeds 5]

Prints the markdown table of docs/router.md ("Tuning on your outcomes"). The base's design
rows are cached in .cache/tune_simulation (delete it after changing the heads' fit).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Small matrices: one BLAS thread is faster than several contending for two shared cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.artifact import default_artifact_dir  # noqa: E402
from router.encoders.static import StaticEncoder  # noqa: E402
from router.features import FEATURE_NAMES, LATEST_FEATURE_SET, features_batch  # noqa: E402
from router.training.dataset import RoutingRecord, load_split  # noqa: E402
from router.training.fit import fit_heads  # noqa: E402
from router.training.metrics import routing_scores  # noqa: E402
from router.training.residual import ResidualConfig, cross_validate, residual_logit  # noqa: E402
from router.training.targets import EVAL_PAIRS, build_targets, weak_pool  # noqa: E402
from router.training.train import pair_labels  # noqa: E402
from router.training.tune import base_width  # noqa: E402

Array = npt.NDArray[np.float64]
FRACTIONS = (0.05, 0.2, 0.5)
SIZES: tuple[int | None, ...] = (None, 300, 72)  # None: every labelled prompt of the source
CACHE = ROOT / ".cache" / "tune_simulation"


def _pair_records(records: list[RoutingRecord], source: str) -> list[RoutingRecord]:
    pair = EVAL_PAIRS.get(source)
    if pair is None:
        return []
    return [r for r in records if r.source == source and all(m in r.outcomes for m in pair)]


def held_out_design(
    train: list[RoutingRecord], rows: list[RoutingRecord], source: str
) -> tuple[Array, Array]:
    """Design rows and base demand logits of `rows` under heads fitted without `source`."""
    path = CACHE / f"{source}.npz"
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        return cached["x"], cached["logit"]
    encoder = StaticEncoder.from_dir(default_artifact_dir(), 512)
    kept = [r for r in train if r.source != source]
    heads = fit_heads(
        encoder.encode([r.prompt for r in kept]),
        features_batch([r.prompt for r in kept]),
        build_targets(kept, weak_pool(kept)),
        pair_labels(kept),
        None,
        FEATURE_NAMES,
        feature_set=LATEST_FEATURE_SET,
    )
    prompts = [r.prompt for r in rows]
    x = heads.design(encoder.encode(prompts), features_batch(prompts, heads.feature_set))
    logit = heads.demand_logit(x, heads.category(x))
    x = x[:, : base_width(heads)]
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, logit=logit)
    return x, logit


def simulate(
    x: Array, logit: Array, weak: Array, strong: Array, size: int | None, fraction: float, seed: int
) -> tuple[float, float, bool]:
    """Untuned and tuned APGR on the rows not fed to tune, and whether the guard tuned."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(x))[: size or len(x)]
    fed = pool[: round(fraction * len(pool))]
    rest = pool[len(fed) :]
    guard = cross_validate(x[fed], logit[fed], weak[fed], strong[fed], ResidualConfig(seed=seed))
    base = routing_scores(logit[rest], weak[rest], strong[rest]).apgr
    if guard.theta is None:
        return base, base, False
    tuned = residual_logit(x[rest], logit[rest], guard.theta)
    return base, routing_scores(tuned, weak[rest], strong[rest]).apgr, True


def _t_interval(values: Array) -> tuple[float, float]:
    # 95% t-interval over seeds (t quantiles for 2..20 draws; 2.0 beyond).
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    half = t.get(len(values), 2.1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sources", nargs="*", default=["mmlu_pro", "bbh", "arena_hard_1k"])
    args = parser.parse_args()
    train = load_split(args.data, "train")
    records = train + load_split(args.data, "dev")
    print(
        "| source | set | fed to tune | untuned APGR | tuned APGR | gain [95% over seeds] "
        "| worst seed | tuned (seeds) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for source in args.sources:
        rows = _pair_records(records, source)
        if len(rows) < 50:
            print(f"| {source} | {len(rows)} | - | - | - | - | - | too few pairwise rows |")
            continue
        x, logit = held_out_design(train, rows, source)
        pair = EVAL_PAIRS[source]
        weak = np.array([r.outcomes[pair[0]] for r in rows])
        strong = np.array([r.outcomes[pair[1]] for r in rows])
        for size in SIZES:
            for fraction in FRACTIONS:
                start = time.perf_counter()
                runs = np.array(
                    [
                        simulate(x, logit, weak, strong, size, fraction, seed)
                        for seed in range(args.seeds)
                    ]
                )
                gain = runs[:, 1] - runs[:, 0]
                low, high = _t_interval(gain)
                n = size or len(rows)
                print(
                    f"| {source} | {n} | {fraction:.0%} ({round(fraction * n)}) "
                    f"| {runs[:, 0].mean():.3f} | {runs[:, 1].mean():.3f} "
                    f"| {gain.mean():+.3f} [{low:+.3f}, {high:+.3f}] | {gain.min():+.3f} "
                    f"| {int(runs[:, 2].sum())}/{args.seeds} |",
                    flush=True,
                )
                print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
