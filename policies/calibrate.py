"""Demand thresholds from a traffic sample, so that each tier gets a chosen share of prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CalibrationError(ValueError):
    """The shares cannot be met (unknown tier, shares over 1, too few prompts)."""


def thresholds_for_shares(
    demands: Sequence[float], tiers: Sequence[str], shares: Mapping[str, float]
) -> dict[str, float]:
    """min_demand per tier (first tier 0) so that tier k gets shares[k] of the sample.

    Tiers are ordered cheapest first; prompts with demand >= a tier's threshold go to the highest
    such tier. Tiers without a share are merged into the tier below them (their threshold is set
    just above their lower neighbour's, so they get no prompts); the first tier takes the rest.
    """
    if not demands:
        raise CalibrationError("the traffic sample has no prompts")
    unknown = set(shares) - set(tiers)
    if unknown:
        raise CalibrationError(f"unknown tiers in --max-share: {', '.join(sorted(unknown))}")
    if tiers and tiers[0] in shares:
        raise CalibrationError(f"the first tier {tiers[0]!r} takes the rest; give no share for it")
    total = sum(shares.values())
    if any(s < 0 for s in shares.values()) or total > 1:
        raise CalibrationError("shares must be non-negative and add up to at most 1")
    ordered = sorted(demands)
    n = len(ordered)
    result = {tiers[0]: 0.0}
    above = 0.0  # share of prompts routed to the tiers above the current one
    for tier in reversed(tiers[1:]):
        above += shares.get(tier, 0.0)
        index = min(max(n - round(above * n), 0), n)
        # Everything at or above ordered[index] goes up; a value past the largest sends nothing.
        result[tier] = ordered[index] if index < n else min(1.0, ordered[-1] + 1e-9)
    thresholds = [result[t] for t in tiers]
    for i in range(1, len(thresholds)):
        if thresholds[i] <= thresholds[i - 1]:
            thresholds[i] = min(1.0, thresholds[i - 1] + 1e-6)
    if any(thresholds[i] <= thresholds[i - 1] for i in range(1, len(thresholds))):
        raise CalibrationError("the sample's demands are too concentrated to separate the tiers")
    return dict(zip(tiers, thresholds, strict=True))


def shares_of(demands: Sequence[float], thresholds: Mapping[str, float]) -> dict[str, float]:
    """The share of prompts each tier receives under the thresholds."""
    order = sorted(thresholds.items(), key=lambda item: item[1])
    counts = dict.fromkeys(thresholds, 0)
    for demand in demands:
        tier = next(name for name, low in reversed(order) if demand >= low)
        counts[tier] += 1
    return {tier: count / len(demands) for tier, count in counts.items()}


def parse_shares(text: str) -> dict[str, float]:
    """`reasoning=0.2,standard=0.5` -> {"reasoning": 0.2, "standard": 0.5}."""
    shares = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise CalibrationError(f"not a TIER=SHARE pair: {item!r}") from None
        if not sep:
            raise CalibrationError(f"not a TIER=SHARE pair: {item!r}")
    return shares


def threshold_keeping_quality(
    rows: Sequence[tuple[float, float, float]], keep: float
) -> dict[str, float]:
    """The highest min_demand whose routing keeps `keep` of the strong tier's judged quality.

    `rows` are (demand, weak quality, strong quality) of judged prompts (`eval --pairs`
    values). Prompts at or above the threshold go to the strong tier; quality is the mean over
    prompts of the tier's quality, and the strong tier's is its mean with every prompt sent up.
    The least cost is the fewest prompts sent up: the first cut, walking down from the highest
    demand, that reaches the target. The threshold lies midway between the lowest demand sent
    up and the highest kept down (rounded to 6 decimals, as `calibrate` writes).
    """
    if not 0.0 < keep <= 1.0:
        raise CalibrationError("--keep is a share of the strong tier's quality in (0, 1]")
    if not rows:
        raise CalibrationError("no judged outcomes with a logged demand")
    ordered = sorted(rows, key=lambda r: -r[0])
    n = len(ordered)
    strong_quality = sum(r[2] for r in ordered) / n
    target = keep * strong_quality - 1e-12  # float sums of 0/1 qualities: no spurious misses
    quality_sum = sum(r[1] for r in ordered)
    k = 0
    while True:
        # A cut between ordered[k - 1] and ordered[k]: only where the demand changes.
        at_cut = k in (0, n) or ordered[k][0] != ordered[k - 1][0]
        if at_cut and quality_sum / n >= target:
            break
        quality_sum += ordered[k][2] - ordered[k][1]
        k += 1
    if k == 0:
        threshold = min(1.0, round(ordered[0][0] + 1e-6, 6))
    elif k == n:
        threshold = ordered[-1][0]
    else:
        low, high = ordered[k][0], ordered[k - 1][0]
        threshold = round((low + high) / 2, 6)
        if not low < threshold <= high:
            threshold = high
    return {
        "threshold": threshold,
        "strong_share": k / n,
        "quality": quality_sum / n,
        "strong_quality": strong_quality,
        "light_quality": sum(r[1] for r in ordered) / n,
        "prompts": n,
    }
