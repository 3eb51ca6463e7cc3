"""Routing tools for the command line: explain one decision, calibrate tier thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from policies.calibrate import CalibrationError, parse_shares, shares_of, thresholds_for_shares
from router import Router, prompt_from_messages


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
        data = yaml.safe_load(Path(source).read_text()) if Path(source).is_file() else {}
        policy = data.setdefault("policy", {})
        written = {t["name"]: t for t in policy.get("tiers", [])}
        for tier in settings.policy.tiers:
            entry = written.setdefault(tier.name, tier.model_dump(exclude_defaults=True))
            entry["min_demand"] = round(thresholds[tier.name], 6)
        policy["tiers"] = [written[t] for t in tiers]
        Path(output).write_text(yaml.safe_dump(data, sort_keys=False))
    return {
        "thresholds": thresholds,
        "shares": shares_of(demands, thresholds),
        "prompts": len(prompts),
    }


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
