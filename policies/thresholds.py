"""Demand thresholds shipped beside the router artifact: how `auto` routes with no policy file.

The router's demand is only comparable with thresholds chosen for the same artifact, so the
thresholds travel with it (`tier_thresholds.json` in the artifact directory). `python -m
policies.thresholds --data ../shared/data/routing` recomputes the shipped file with the
calibration of `rightsize calibrate` (docs/policies.md, "Routing with no configuration").
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.calibrate import shares_of, thresholds_for_shares
from policies.config import PolicySpec, TierSpec

THRESHOLDS_FILE = "tier_thresholds.json"
SHIPPED = "thresholds shipped with the router artifact"
# The shares the shipped thresholds aim at on the traffic mix below, and why: every prompt of
# the dev split is a benchmark task written to separate models, harder than live traffic (where
# greetings and look-ups, demand < 0.1, add to the light share), so the top fifth of it, mostly
# multi-step math and the hardest open-chat prompts, goes to the reasoning tier and the next
# 30% to the standard one.
TARGET_SHARES = {"standard": 0.3, "reasoning": 0.2}
TIER_ORDER = ("light", "standard", "reasoning")


@dataclass(frozen=True, slots=True)
class DemandThresholds:
    """min_demand per tier name (cheapest first), and where they were read, for the log."""

    min_demand: dict[str, float]
    origin: str


def shipped_thresholds_file() -> Path:
    """The thresholds file of the shipped artifact.

    Found without importing the router package, which would load numpy into every command
    that only reads the configuration.
    """
    spec = importlib.util.find_spec("router")
    if spec is None or spec.origin is None:  # pragma: no cover - the package is installed
        raise FileNotFoundError("the router package is not installed")
    return Path(spec.origin).parent / "artifact" / THRESHOLDS_FILE


def load_demand_thresholds(artifact_dir: str | Path | None) -> DemandThresholds:
    """The thresholds of the configured artifact, else (said in `origin`) the shipped ones."""
    shipped = shipped_thresholds_file()
    if artifact_dir is None:
        return DemandThresholds(_read(shipped), SHIPPED)
    own = Path(artifact_dir) / THRESHOLDS_FILE
    if own.is_file() and own.resolve() != shipped.resolve():
        return DemandThresholds(_read(own), f"thresholds from {own}")
    if own.is_file():
        return DemandThresholds(_read(own), SHIPPED)
    return DemandThresholds(
        _read(shipped), f"{SHIPPED}: router.artifact {artifact_dir} has no {THRESHOLDS_FILE}"
    )


def demand_tiers(
    tiers: Mapping[str, Sequence[str]], thresholds: DemandThresholds
) -> list[TierSpec]:
    """Policy tiers for the model tiers that have a threshold, cheapest first.

    `tiers` maps each model tier to its deployments in file order. The cheapest tier present
    starts at 0 (with only standard and reasoning, standard takes everything below reasoning).
    """
    known = [name for name in thresholds.min_demand if tiers.get(name)]
    return [
        TierSpec(
            name=name,
            deployments=list(tiers[name]),
            min_demand=0.0 if i == 0 else thresholds.min_demand[name],
        )
        for i, name in enumerate(known)
    ]


def describe_tiers(spec: PolicySpec) -> str:
    """`light < 0.476 <= standard < 0.727 <= reasoning`: which demand goes to which tier."""
    parts = [spec.tiers[0].name] if spec.tiers else []
    for tier in spec.tiers[1:]:
        parts.append(f"< {tier.min_demand:.3f} <= {tier.name}")
    return " ".join(parts)


def _read(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {t["name"]: float(t["min_demand"]) for t in data["tiers"]}


# --- Recomputing the shipped file -------------------------------------------------------------


def traffic_mix(data_dir: Path) -> tuple[list[str], dict[str, int]]:
    """The dev split with every source weighted equally: each source's prompts repeated in
    order up to the size of the largest, so that no one benchmark sets the thresholds."""
    by_source: dict[str, list[str]] = {}
    with gzip.open(data_dir / "dev.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            by_source.setdefault(row["source"], []).append(row["prompt"])
    size = max(len(prompts) for prompts in by_source.values())
    mix = [
        prompt
        for source in sorted(by_source)
        for prompt in itertools.islice(itertools.cycle(by_source[source]), size)
    ]
    return mix, {source: len(by_source[source]) for source in sorted(by_source)}


def compute_thresholds(data_dir: Path, artifact_dir: Path | None = None) -> dict[str, Any]:
    """The thresholds file's content for an artifact, calibrated on the documented mix."""
    from router import Router
    from router.artifact import default_artifact_dir, read_manifest

    artifact = artifact_dir or default_artifact_dir()
    router = Router.load(artifact, runtime="static")
    prompts, sources = traffic_mix(data_dir)
    demands: list[float] = []
    for start in range(0, len(prompts), 256):
        demands.extend(
            e.reasoning_demand for e in router.estimate_batch(prompts[start : start + 256])
        )
    # Three decimals, as the x-rightsize-demand header shows demand; the shares are measured
    # with the rounded values that ship.
    calibrated = thresholds_for_shares(demands, TIER_ORDER, TARGET_SHARES)
    thresholds = {tier: round(value, 3) for tier, value in calibrated.items()}
    shares = shares_of(demands, thresholds)
    return {
        "artifact_created": read_manifest(artifact).get("created"),
        "command": "python -m policies.thresholds --data ../shared/data/routing",
        "runtime": "static",
        "traffic_mix": {
            "data": "dev split of ../shared/data/routing (dev.jsonl.gz)",
            "weighting": "every source equally: its prompts repeated in order up to "
            f"{len(prompts) // len(sources)} each",
            "dev_prompts_per_source": sources,
        },
        "target_shares": TARGET_SHARES,
        "measured_shares": {tier: round(share, 4) for tier, share in shares.items()},
        "tiers": [{"name": t, "min_demand": thresholds[t]} for t in TIER_ORDER],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m policies.thresholds", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="../shared/data/routing")
    parser.add_argument("--artifact", type=Path, default=None, help="default: the shipped one")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: ARTIFACT/" + THRESHOLDS_FILE
    )
    args = parser.parse_args(argv)
    content = compute_thresholds(args.data, args.artifact)
    if args.out is None:
        from router.artifact import default_artifact_dir

        args.out = (args.artifact or default_artifact_dir()) / THRESHOLDS_FILE
    args.out.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    tiers = ", ".join(f"{t['name']} >= {t['min_demand']}" for t in content["tiers"])
    print(f"wrote {args.out}: {tiers}; shares {content['measured_shares']}")


if __name__ == "__main__":  # pragma: no cover
    main()
