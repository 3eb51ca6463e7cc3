"""Configuration: validation that names file, line and field; overrides; zero-config defaults."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gateway.settings import ConfigError, build_catalog, load_settings
from policies import ModelInfo, TokenPrice

GOOD = """\
store:
  url: sqlite:///rightsize.db
models:
  - name: small
    model: openai/gpt-4o-mini
    api_key_env: OPENAI_API_KEY
    tier: light
  - name: local-llama
    model: openai/llama
    api_base: http://127.0.0.1:8000/v1
    tier: light
    local: true
"""


def no_info(_: str) -> ModelInfo | None:
    return None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rightsize.yaml"
    path.write_text(text)
    return path


def test_error_names_the_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD.replace(
            "tier: light\n  - name: local", "tier: light\n    timeout_s: -1\n  - name: local"
        ),
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert f"{path}:8: models[0].timeout_s" in str(caught.value)
    assert "greater than 0" in str(caught.value)


def test_unknown_key_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "servre:\n  port: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert f"{path}:13: servre" in str(caught.value)


def test_an_inline_secret_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("api_key_env: OPENAI_API_KEY", "api_key_env: sk-live-123"))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "models[0].api_key_env" in str(caught.value)
    assert "NAME of an environment variable" in str(caught.value)


def test_environment_overrides_win_and_are_named_when_invalid(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    settings, _ = load_settings(
        path,
        environ={
            "RIGHTSIZE_SERVER__PORT": "8080",
            "RIGHTSIZE_MODELS__1__API_BASE": "http://h:1/v1",
        },
    )
    assert settings.server.port == 8080
    assert settings.models[1].api_base == "http://h:1/v1"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"RIGHTSIZE_SERVER__PORT": "eighty"})
    assert "environment variable RIGHTSIZE_SERVER__PORT: server.port" in str(caught.value)


def test_config_path_comes_from_rightsize_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    settings, source = load_settings(None, environ={"RIGHTSIZE_CONFIG": str(path)})
    assert source == str(path) and [m.name for m in settings.models] == ["small", "local-llama"]


def test_remote_model_without_any_price_fails_at_start(tmp_path: Path) -> None:
    settings, source = load_settings(write(tmp_path, GOOD), environ={})
    with pytest.raises(ConfigError) as caught:
        build_catalog(settings, no_info, source)
    assert "models[0].price" in str(caught.value)


def test_prices_come_from_the_model_map_unless_overridden(tmp_path: Path) -> None:
    price = TokenPrice(Decimal("1e-7"), Decimal("2e-7"), Decimal("5e-8"))
    settings, _ = load_settings(write(tmp_path, GOOD), environ={})
    catalog = build_catalog(settings, lambda m: ModelInfo(price=price, context_window=1000))
    small = catalog.get("small")
    assert small is not None and small.price == price and small.capabilities.context_window == 1000
    local = catalog.get("local-llama")
    assert local is not None and local.price == price


def test_local_model_without_a_known_price_is_free(tmp_path: Path) -> None:
    settings, _ = load_settings(
        write(
            tmp_path,
            GOOD.replace("openai/gpt-4o-mini", "openai/x").replace(
                "api_key_env: OPENAI_API_KEY", "local: true"
            ),
        ),
        environ={},
    )
    catalog = build_catalog(settings, no_info)
    assert all(d.price.input == 0 for d in catalog.deployments)


def test_routing_default_must_name_a_model_or_tier(tmp_path: Path) -> None:
    text = (
        GOOD.replace("openai/gpt-4o-mini", "openai/x").replace(
            "api_key_env: OPENAI_API_KEY", "local: true"
        )
        + "routing:\n  default: huge\n"
    )
    settings, _ = load_settings(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError) as caught:
        build_catalog(settings, no_info)
    assert "routing.default" in str(caught.value)


def test_zero_config_enables_the_providers_whose_keys_are_set() -> None:
    settings, source = load_settings(
        None, environ={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    )
    assert source == "built-in defaults"
    assert [m.name for m in settings.models] == ["gpt-4o-mini", "gpt-4o", "o4-mini"]
    assert {m.api_base for m in settings.models} == {"http://127.0.0.1:9/v1"}
    settings, _ = load_settings(None, environ={"ANTHROPIC_API_KEY": "sk-ant"})
    assert [m.tier for m in settings.models] == ["light", "standard", "reasoning"]
    settings, _ = load_settings(None, environ={})
    assert settings.models == []


def test_zero_config_prices_all_default_models_from_litellm() -> None:
    from gateway.llm import model_info

    env = {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant"}
    settings, _ = load_settings(None, environ=env)
    catalog = build_catalog(settings, model_info)
    assert all(d.price.output > 0 for d in catalog.deployments)
    assert settings.default_route(catalog) == "standard"
