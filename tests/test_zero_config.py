"""Zero configuration: with only a provider key, `auto` routes by demand across the key's tiers,
with the thresholds shipped beside the router artifact, and says which thresholds are in force."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.llm import model_info
from gateway.settings import build_catalog, load_settings
from policies.thresholds import (
    THRESHOLDS_FILE,
    compute_thresholds,
    load_demand_thresholds,
    shipped_thresholds_file,
)
from tests.conftest import MASTER_KEY, LiveServer, gateway_env
from tests.fake_upstream import ANSWER, RunningUpstream

GREETING = "Hello!"
PROOF = (
    "Prove that for every integer n >= 1, the number n^5 - n is divisible by 30. Proceed in "
    "steps: first show divisibility by 2, then by 3, then by 5, and conclude."
)
SHIPPED = load_demand_thresholds(None).min_demand
ROUTING_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routing"


def zero_config_server(directory: Path, upstream: RunningUpstream) -> LiveServer:
    """`rightsize serve` with no --config and no RIGHTSIZE_CONFIG: the built-in defaults."""
    env = gateway_env(
        OPENAI_API_KEY="sk-fake-upstream",
        OPENAI_BASE_URL=upstream.base_url,
        RIGHTSIZE_STORE__URL=f"sqlite:///{directory / 'rightsize.db'}",
    )
    env.pop("ANTHROPIC_API_KEY", None)
    return LiveServer(None, env, ready_s=90, cwd=directory)  # the host is shared and busy


@pytest.fixture(scope="module")
def server(
    upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = zero_config_server(tmp_path_factory.mktemp("zero-config"), upstream)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=admin) as http:
        assert http.post("/admin/teams", json={"name": "search"}).status_code == 201
        response = http.post("/admin/keys", json={"team": "search"})
        assert response.status_code == 201, response.text
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=response.json()["key"])


def route_reason(server: LiveServer, request_id: str) -> str:
    """The spend row's explanation, polled until the server has flushed it."""
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    for _ in range(500):
        rows = httpx.get(
            server.base_url + "/admin/spend", params={"request_id": request_id}, headers=admin
        ).json()["data"]
        if rows:
            return str(rows[0]["route_reason"])
        time.sleep(0.02)
    raise AssertionError(f"no spend-log row for {request_id}")


def test_a_greeting_is_served_by_the_light_tier_below_the_standard_threshold(
    server: LiveServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": GREETING}]
    )
    assert raw.parse().choices[0].message.content == ANSWER
    assert (raw.headers["x-rightsize-tier"], raw.headers["x-rightsize-model"]) == (
        "light",
        "gpt-4o-mini",
    )
    reason = route_reason(server, raw.headers["x-request-id"])
    assert f"-> tier 'light' (< min_demand {SHIPPED['standard']:.3f} of 'standard')" in reason


def test_a_multi_step_proof_is_served_by_the_reasoning_tier_past_its_threshold(
    server: LiveServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": PROOF}]
    )
    assert raw.parse().choices[0].message.content == ANSWER
    assert (raw.headers["x-rightsize-tier"], raw.headers["x-rightsize-model"]) == (
        "reasoning",
        "o4-mini",
    )
    reason = route_reason(server, raw.headers["x-request-id"])
    assert f"-> tier 'reasoning' (>= min_demand {SHIPPED['reasoning']:.3f} of 'reasoning')" in (
        reason
    )


def test_the_first_log_line_names_the_thresholds_in_force(server: LiveServer) -> None:
    first = next(line for line in server.log.read_text().splitlines() if "config from" in line)
    assert "config from built-in defaults" in first
    assert (
        f"auto -> tiers by demand: light < {SHIPPED['standard']:.3f} <= standard "
        f"< {SHIPPED['reasoning']:.3f} <= reasoning (thresholds shipped with the router artifact)"
    ) in first


def test_route_says_which_thresholds_are_in_force_and_which_one_a_prompt_crossed() -> None:
    env = {"OPENAI_API_KEY": "sk-x", "RIGHTSIZE_CONFIG": None, "ANTHROPIC_API_KEY": None}
    result = CliRunner(env=env).invoke(main, ["route", PROOF, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["auto"].endswith("(thresholds shipped with the router artifact)")
    assert report["decision"]["tier"] == "reasoning"
    assert (
        f">= min_demand {SHIPPED['reasoning']:.3f} of 'reasoning'" in (report["decision"]["reason"])
    )
    text = CliRunner(env=env).invoke(main, ["route", GREETING]).output
    assert text.splitlines()[0] == report["auto"]


def test_anthropic_keys_get_the_three_tiers_and_their_thresholds() -> None:
    settings, _ = load_settings(None, environ={"ANTHROPIC_API_KEY": "sk-ant"})
    tiers = [(t.name, t.min_demand, t.deployments) for t in settings.policy.tiers]
    assert tiers == [
        ("light", 0.0, ["claude-haiku-4-5"]),
        ("standard", SHIPPED["standard"], ["claude-sonnet-4-5"]),
        ("reasoning", SHIPPED["reasoning"], ["claude-opus-4-5"]),
    ]


def test_an_artifact_without_thresholds_falls_back_to_the_shipped_ones_and_says_so(
    tmp_path: Path,
) -> None:
    artifact = _artifact_copy(tmp_path)
    env = {"OPENAI_API_KEY": "sk-x", "RIGHTSIZE_ROUTER__ARTIFACT": str(artifact)}
    settings, source = load_settings(None, environ=env)
    assert {t.name: t.min_demand for t in settings.policy.tiers} == SHIPPED
    described = settings.describe_auto(source, "standard")
    assert f"router.artifact {artifact} has no {THRESHOLDS_FILE}" in described


def test_an_artifact_with_its_own_thresholds_uses_them(tmp_path: Path) -> None:
    artifact = _artifact_copy(tmp_path)
    own = {"light": 0.0, "standard": 0.2, "reasoning": 0.9}
    tiers = [{"name": name, "min_demand": value} for name, value in own.items()]
    (artifact / THRESHOLDS_FILE).write_text(json.dumps({"tiers": tiers}))
    env = {"OPENAI_API_KEY": "sk-x", "RIGHTSIZE_ROUTER__ARTIFACT": str(artifact)}
    settings, source = load_settings(None, environ=env)
    assert {t.name: t.min_demand for t in settings.policy.tiers} == own
    assert f"(thresholds from {artifact / THRESHOLDS_FILE})" in settings.describe_auto(source, None)


def test_a_configuration_file_without_policy_tiers_is_taken_as_written(tmp_path: Path) -> None:
    config = tmp_path / "rightsize.yaml"
    config.write_text(
        "models:\n"
        "  - {name: small, model: openai/gpt-4o-mini, tier: light}\n"
        "  - {name: big, model: openai/gpt-4o, tier: standard}\n"
    )
    settings, source = load_settings(config, environ={})
    assert settings.policy.tiers == []
    catalog = build_catalog(settings, model_info, source)
    assert settings.describe_auto(source, settings.default_route(catalog)) == (
        "auto -> standard (no policy.tiers: no demand routing)"
    )


@pytest.mark.skipif(not ROUTING_DATA.is_dir(), reason=f"no routing data at {ROUTING_DATA}")
def test_the_documented_command_reproduces_the_shipped_thresholds() -> None:
    shipped = json.loads(shipped_thresholds_file().read_text())
    assert compute_thresholds(ROUTING_DATA) == shipped


def _artifact_copy(tmp_path: Path) -> Path:
    """The shipped artifact without its thresholds file (links, not copies: 13 MB)."""
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    for path in shipped_thresholds_file().parent.iterdir():
        if path.name != THRESHOLDS_FILE:
            os.symlink(path, artifact / path.name)
    return artifact
