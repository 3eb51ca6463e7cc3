"""Invalid policies fail at start, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, build_catalog, load_settings
from policies import ModelInfo

HEAD = """\
models:
  - {name: small, model: openai/small, local: true}
  - {name: large, model: openai/large, local: true}
policy:
  tiers:
"""


def check(tmp_path: Path, tiers: str, extra: str = "") -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + tiers + extra)
    settings, source = load_settings(path, environ={})
    with pytest.raises(ConfigError) as caught:
        build_catalog(settings, lambda _: ModelInfo(price=None), source)
    return str(caught.value)


def test_unknown_deployment_in_a_tier(tmp_path: Path) -> None:
    error = check(tmp_path, "    - {name: light, deployments: [small, tiny]}\n")
    assert "policy.yaml:6: policy.tiers[0].deployments[1]: unknown deployment 'tiny'" in error


def test_thresholds_must_increase(tmp_path: Path) -> None:
    error = check(
        tmp_path,
        "    - {name: light, deployments: [small]}\n"
        "    - {name: standard, deployments: [large], min_demand: 0}\n",
    )
    assert "policy.yaml:7: policy.tiers[1].min_demand" in error and "increase" in error


def test_thresholds_outside_zero_to_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + "    - {name: light, deployments: [small], min_demand: 1.5}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "policy.yaml:6: policy.tiers[0].min_demand" in str(caught.value)


def test_a_fallback_cycle(tmp_path: Path) -> None:
    error = check(
        tmp_path,
        "    - {name: light, deployments: [small], fallback: standard}\n"
        "    - {name: standard, deployments: [large], min_demand: 0.5, fallback: light}\n",
    )
    assert "fallback cycle: light -> standard -> light" in error


def test_a_tier_with_no_deployment(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + "    - {name: light, deployments: []}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "policy.tiers[0].deployments: List should have at least 1 item" in str(caught.value)


def test_a_team_naming_an_unknown_tier(tmp_path: Path) -> None:
    error = check(
        tmp_path,
        "    - {name: light, deployments: [small]}\n",
        "  teams:\n    search: {allowed_tiers: [gold]}\n",
    )
    assert "policy.teams.search.allowed_tiers[0]: unknown tier 'gold'" in error


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_shipped_example_policies_are_valid(example: Path) -> None:
    from gateway.llm import model_info

    settings, source = load_settings(example, environ={})
    catalog = build_catalog(settings, model_info, source)
    assert len(settings.policy.tiers) >= 2 and catalog.deployments


def test_the_local_only_example_keeps_the_offline_team_local() -> None:
    from gateway.llm import model_info
    from policies import NotAllowed, PolicyEngine, RoutingRequest, TeamContext
    from router import Estimate

    example = next(p for p in EXAMPLES if p.name == "local-only-team.yaml")
    settings, source = load_settings(example, environ={})
    engine = PolicyEngine(build_catalog(settings, model_info, source), settings.policy, None)
    hard = Estimate(0.95, 500, 2000, "code")
    decision = engine.decide(RoutingRequest("auto", prompt_tokens=50), hard, TeamContext("offline"))
    assert all(d.local for d in decision.attempts())
    with pytest.raises(NotAllowed):
        engine.decide(RoutingRequest("gpt-4o"), hard, TeamContext("offline"))
