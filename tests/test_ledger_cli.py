"""`rightsize budgets` and `rightsize report` on the embedded store."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main


def config(tmp_path: Path) -> str:
    path = tmp_path / "rightsize.yaml"
    path.write_text(
        f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\nledger:\n  timezone: Europe/Berlin\n"
    )
    return str(path)


def test_budgets_are_set_listed_shown_and_deleted_from_the_command_line(tmp_path: Path) -> None:
    runner, cfg = CliRunner(), config(tmp_path)
    assert runner.invoke(main, ["teams", "create", "search", "--config", cfg]).exit_code == 0
    args = ["budgets", "set", "--team", "search", "--period", "monthly", "--limit-usd", "25"]
    created = runner.invoke(main, [*args, "--alert", "80", "--config", cfg])
    assert created.exit_code == 0, created.output
    assert "team:search:monthly" in created.output
    listed = runner.invoke(main, ["budgets", "list", "--json", "--config", cfg])
    assert '"limit_usd": "25"' in listed.output
    usage = runner.invoke(main, ["budgets", "usage", "search", "--json", "--config", cfg])
    assert usage.exit_code == 0, usage.output
    assert '"remaining_usd": "25"' in usage.output
    deleted = runner.invoke(main, ["budgets", "delete", "team:search:monthly", "--config", cfg])
    assert deleted.exit_code == 0
    again = runner.invoke(main, ["budgets", "delete", "team:search:monthly", "--config", cfg])
    assert again.exit_code == 1 and "does not exist" in again.output


def test_a_budget_without_any_limit_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = CliRunner().invoke(
        main, ["budgets", "set", "--team", "search", "--period", "daily", "--config", cfg]
    )
    assert result.exit_code == 1 and "at least one of" in result.output


def test_report_costs_prints_csv(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    args = ["report", "costs", "--start", "2026-03-01", "--end", "2026-03-31"]
    result = CliRunner().invoke(
        main, [*args, "--group-by", "team,day", "--format", "csv", "--config", cfg]
    )
    assert result.exit_code == 0, result.output
    header = next(csv.reader(io.StringIO(result.output)))
    assert header == [
        "team",
        "day",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
    ]


def test_report_costs_names_an_unpriced_local_model_under_the_table(tmp_path: Path) -> None:
    cfg = Path(config(tmp_path))
    cfg.write_text(
        cfg.read_text()
        + "models:\n"
        + "  - {name: loc, model: hosted_vllm/x, api_base: 'http://127.0.0.1:9/v1', local: true}\n"
    )
    args = ["report", "costs", "--start", "2026-03-01", "--end", "2026-03-31"]
    result = CliRunner().invoke(main, [*args, "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "local loc: unpriced; unpriced: no price and no gpu_cost" in result.output


def test_report_routing_prints_the_tiers_and_the_demand_histogram(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    args = ["report", "routing", "--start", "2026-03-01", "--end", "2026-03-31"]
    result = CliRunner().invoke(main, [*args, "--format", "json", "--config", cfg])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["report"] == "routing" and report["timezone"] == "Europe/Berlin"
    assert len(report["demand_histogram"]) == 10
    assert report["totals"] == {"requests": 0, "cache_hits": 0, "cache_hit_rate": None}
