"""The cache section of the configuration: defaults, environment overrides, start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cache.config import DEFAULT_SEMANTIC_THRESHOLD
from gateway.settings import ConfigError, Settings, load_settings
from tests.conftest import gateway_env

CONFIG = """\
store:
  url: sqlite:///rightsize.db
cache:
  ttl_s: 60
  teams:
    support:
      semantic: true
      semantic_threshold: 1.5
"""


def test_cache_defaults_to_in_process_exact_cache_with_semantic_off() -> None:
    settings = Settings()
    assert settings.cache.enabled
    assert settings.store.redis_url is None
    assert settings.cache.team("anyone").semantic is False
    assert settings.cache.semantic.threshold == DEFAULT_SEMANTIC_THRESHOLD


def test_redis_url_and_cache_fields_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "rightsize.yaml"
    path.write_text("store:\n  url: sqlite:///x.db\n")
    settings, _ = load_settings(
        path,
        {
            "RIGHTSIZE_STORE__REDIS_URL": "redis://10.0.0.5:6379/2",
            "RIGHTSIZE_CACHE__TTL_S": "600",
            "RIGHTSIZE_CACHE__TEAMS__SUPPORT__SEMANTIC": "true",
        },
    )
    assert settings.store.redis_url == "redis://10.0.0.5:6379/2"
    assert settings.cache.ttl_s == 600
    assert settings.cache.team("support").semantic is True


def test_invalid_team_threshold_names_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rightsize.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as error:
        load_settings(path, {})
    assert f"{path}:8: cache.teams.support.semantic_threshold" in str(error.value)


def test_redis_backend_without_a_redis_url_fails_at_start() -> None:
    from gateway.app import create_app

    settings = Settings.model_validate({"cache": {"backend": "redis"}})
    with pytest.raises(ConfigError, match=r"store\.redis_url"):
        create_app(settings, environ=gateway_env())
