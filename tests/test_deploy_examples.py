"""The configurations in deploy/examples load as the gateway would load them, and the vLLM
compose example agrees with its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.llm import model_info
from gateway.settings import build_catalog, load_settings
from tests.conftest import PRICE_SMALL, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "compose.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_configuration_loads(path: Path) -> None:
    settings, _ = load_settings(path, environ={})
    assert build_catalog(settings, model_info, str(path)).deployments


def test_vllm_compose_serves_the_model_and_gpus_the_configuration_prices() -> None:
    folder = EXAMPLES / "local-vllm"
    settings, _ = load_settings(folder / "rightsize.yaml", environ={})
    catalog = build_catalog(settings, model_info)
    local = catalog.get("local-qwen")
    assert local is not None and local.local and local.pricing == "gpu_hour"
    assert local.gpu_cost is not None
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    vllm = compose["services"]["vllm"]
    assert f"--served-model-name={local.upstream_model}" in vllm["command"]
    assert local.api_base == "http://vllm:8000/v1"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["count"] == local.gpu_cost.gpus
    # the local tier falls back to a remote one
    tiers = {t.name: t for t in settings.policy.tiers}
    assert tiers["local"].fallback == "remote"
    remote = [catalog.get(name) for name in tiers["remote"].deployments]
    assert all(d is not None and not d.local for d in remote)


async def test_vllm_example_sends_the_local_tier_remote_while_the_engine_is_down(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    example = yaml.safe_load((EXAMPLES / "local-vllm" / "rightsize.yaml").read_text())
    for model in example["models"]:
        if model.get("local"):
            model["api_base"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens
        else:  # the remote models, on the fake upstream (direct: no litellm import to wait for)
            model.update(model="openai/fake-ok", api_base=upstream.base_url, price=PRICE_SMALL)
            model.update(api_key_env="FAKE_UPSTREAM_KEY", transport="openai_http")
    config = gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)
    config.update(models=example["models"], policy=example["policy"])
    async with in_process_gateway(config) as gw:
        response = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": "hi"}]},
            headers=gw.auth,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-rightsize-model"] == "gpt-4o-mini"
        row = await gw.admin.spend(response.headers["x-request-id"])
    assert row["attempts"] == 2 and "fallback 'gpt-4o-mini'" in row["route_reason"]
