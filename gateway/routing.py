"""Routing tools for the command line: explain one decision, calibrate tier thresholds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from tqdm import tqdm

from gateway.llm import model_info
from gateway.settings import ConfigError, Settings, build_catalog
from gateway.tokens import prompt_tokens
from policies import (
    Decision,
    PolicyEngine,
    Refusal,
    RoutingRequest,
    TeamContext,
    UnknownModel,
)
from policies.calibrate import (
    CalibrationError,
    parse_shares,
    shares_of,
    threshold_keeping_quality,
    thresholds_for_shares,
)
from router import Router, prompt_from_messages

if TYPE_CHECKING:
    from gateway.store import OutcomeRecord


def _engine(settings: Settings, source: str) -> PolicyEngine:
    catalog = build_catalog(settings, model_info, source)
    return PolicyEngine(catalog, settings.policy, settings.default_route(catalog))


def _router(settings: Settings) -> Router:
    try:
        return Router.load(settings.router.artifact, runtime=settings.router.runtime)
    except Exception as exc:
        raise ConfigError(f"router: cannot load the router artifact: {exc}") from exc


def explain_route(
    settings: Settings, source: str, prompt: str, model: str, team: str | None
) -> dict[str, Any]:
    """The estimate and the decision for one prompt, as JSON-ready data."""
    engine = _engine(settings, source)
    estimate = _router(settings).estimate(prompt) if settings.router.enabled else None
    messages = [{"role": "user", "content": prompt}]
    request = RoutingRequest(model=model, prompt_tokens=prompt_tokens(messages))
    report: dict[str, Any] = {"estimate": estimate.as_dict() if estimate else None}
    try:
        decision = engine.decide(request, estimate, TeamContext(team) if team else None)
    except UnknownModel as exc:
        report["refusal"] = {"status": 404, "message": str(exc)}
        return report
    except Refusal as exc:
        report["refusal"] = {"status": exc.status, "message": str(exc)}
        return report
    report["decision"] = decision_json(decision)
    return report


def decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "deployment": decision.deployment.name,
        "tier": decision.tier,
        "reason": decision.reason,
        "fallbacks": [d.name for d in decision.fallbacks],
        "reasoning_effort": decision.reasoning_effort,
        "latency_class": decision.latency_class,
        "expected_cost_usd": str(decision.expected_cost)
        if decision.expected_cost is not None
        else None,
        "candidates": [
            {
                "deployment": c.deployment,
                "tier": c.tier,
                "kept": c.kept,
                "why": c.why,
                "expected_cost_usd": str(c.expected_cost) if c.expected_cost is not None else None,
            }
            for c in decision.candidates
        ],
    }


def calibrate_policy(
    settings: Settings, source: str, traffic: str, max_share: str, output: str | None
) -> dict[str, Any]:
    """Thresholds for the policy's tiers from a sample of prompts; optionally write the config."""
    tiers = [t.name for t in settings.policy.tiers]
    if len(tiers) < 2:
        raise ConfigError(f"{source}: policy.tiers: calibration needs at least two tiers")
    prompts = list(_read_prompts(Path(traffic)))
    router = _router(settings)
    demands: list[float] = []
    with tqdm(total=len(prompts), desc="calibrate", unit="prompt", disable=None) as bar:
        for start in range(0, len(prompts), 256):
            batch = prompts[start : start + 256]
            demands.extend(e.reasoning_demand for e in router.estimate_batch(batch))
            bar.update(len(batch))
    try:
        thresholds = thresholds_for_shares(demands, tiers, parse_shares(max_share))
    except CalibrationError as exc:
        raise ConfigError(f"calibrate: {exc}") from None
    if output:
        write_thresholds(settings, source, thresholds, output)
    return {
        "thresholds": thresholds,
        "shares": shares_of(demands, thresholds),
        "prompts": len(prompts),
    }


def write_thresholds(
    settings: Settings, source: str, thresholds: Mapping[str, float], output: str
) -> None:
    """The configuration at `source` with the tiers' min_demand set from `thresholds` (tiers
    not named there keep theirs), written to `output`."""
    tiers = [t.name for t in settings.policy.tiers]
    data = yaml.safe_load(Path(source).read_text()) if Path(source).is_file() else {}
    policy = data.setdefault("policy", {})
    written = {t["name"]: t for t in policy.get("tiers", [])}
    for tier in settings.policy.tiers:
        entry = written.setdefault(tier.name, tier.model_dump(exclude_defaults=True))
        entry["min_demand"] = round(thresholds.get(tier.name, tier.min_demand), 6)
    policy["tiers"] = [written[t] for t in tiers]
    Path(output).write_text(yaml.safe_dump(data, sort_keys=False))


def calibrate_from_outcomes(
    settings: Settings,
    source: str,
    outcomes: Sequence[OutcomeRecord],
    keep: float,
    output: str | None,
) -> dict[str, Any]:
    """Per strong tier judged in `outcomes`, the min_demand that keeps `keep` of its judged
    quality at the fewest prompts sent to it; optionally write the configuration."""
    from ledger.judged import VERDICT_PAIRS

    tiers = {t.name: t.min_demand for t in settings.policy.tiers}
    by_tier: dict[str, list[tuple[float, float, float]]] = {}
    skipped = 0
    for outcome in outcomes:
        if outcome.verdict not in VERDICT_PAIRS or outcome.reasoning_demand is None:
            skipped += 1
            continue
        weak, strong = VERDICT_PAIRS[outcome.verdict]
        by_tier.setdefault(outcome.strong_tier, []).append((outcome.reasoning_demand, weak, strong))
    if not by_tier:
        raise ConfigError("calibrate: no judged outcomes with a logged demand in the period")
    first = next(iter(tiers), None)
    chosen: dict[str, dict[str, float]] = {}
    for tier, rows in sorted(by_tier.items()):
        if tier not in tiers or tier == first:
            raise ConfigError(
                f"{source}: policy.tiers: the outcomes judge tier {tier!r}, which is not a "
                "policy tier above the first"
            )
        try:
            chosen[tier] = threshold_keeping_quality(rows, keep)
        except CalibrationError as exc:
            raise ConfigError(f"calibrate: {exc}") from None
    proposed = dict(tiers, **{t: c["threshold"] for t, c in chosen.items()})
    values = list(proposed.values())
    if any(values[i] <= values[i - 1] for i in range(1, len(values))):
        raise ConfigError(
            "calibrate: the chosen thresholds do not rise with the tiers: "
            + ", ".join(f"{t} {v:.4f}" for t, v in proposed.items())
        )
    if output:
        write_thresholds(settings, source, proposed, output)
    return {"tiers": chosen, "thresholds": proposed, "skipped": skipped}


def _read_prompts(path: Path) -> list[str]:
    prompts = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ConfigError(f"{path}:{number}: not valid JSON") from None
            if isinstance(row.get("prompt"), str):
                prompts.append(row["prompt"])
            elif isinstance(row.get("messages"), list):
                prompts.append(prompt_from_messages(row["messages"]))
            else:
                raise ConfigError(f"{path}:{number}: a row needs 'prompt' or 'messages'")
    return prompts
