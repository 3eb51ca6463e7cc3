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
