"""The `rightsize` command line: admin verbs on the store, and start-up validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main


def config(tmp_path: Path) -> Path:
    path = tmp_path / "rightsize.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n")
    return path


def test_teams_and_keys_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = str(config(tmp_path))
    env = {"RIGHTSIZE_KEY_SECRET": "s"}
    assert runner.invoke(main, ["teams", "create", "search", "--config", cfg]).exit_code == 0
    duplicate = runner.invoke(main, ["teams", "create", "search", "--config", cfg])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    created = runner.invoke(main, ["keys", "create", "--team", "search", "--config", cfg], env=env)
    assert created.exit_code == 0, created.output
    secret = next(
        line.split()[-1] for line in created.output.splitlines() if line.startswith("key:")
    )
    key_id = next(
        line.split()[-1] for line in created.output.splitlines() if line.startswith("key id")
    )
    assert secret.startswith("rs-")
    listed = runner.invoke(main, ["keys", "list", "--config", cfg, "--json"])
    assert key_id in listed.output and secret not in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", key_id, "--config", cfg])
    assert revoked.exit_code == 0
    assert (
        '"revoked_at": null'
        not in runner.invoke(main, ["keys", "list", "--config", cfg, "--json"]).output
    )
    assert runner.invoke(main, ["teams", "delete", "search", "--config", cfg]).exit_code == 0
    assert "(none)" in runner.invoke(main, ["teams", "list", "--config", cfg]).output


def test_serve_with_an_invalid_config_exits_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 99999\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{path}:2: server.port" in result.stderr


def test_serve_refuses_a_model_whose_key_variable_is_unset(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n"
        "models:\n  - name: m\n    model: openai/gpt-4o-mini\n"
        "    api_key_env: RS_TEST_UNSET_VARIABLE\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "RS_TEST_UNSET_VARIABLE" in result.stderr
