"""The `rightsize` command line."""

from __future__ import annotations

import asyncio
import json
import logging.config
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from gateway.ledger import cli as ledger_cli
from gateway.settings import CONFIG_ENV, ConfigError, Settings, load_settings

_T = TypeVar("_T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"YAML configuration file (default: ${CONFIG_ENV}, else built-in defaults).",
)


@click.group()
@click.version_option(package_name="rightsize-gateway")
def main() -> None:
    """Rightsize: route each LLM request to the right-size model, within budget."""


def _settings(config_path: str | None) -> tuple[Settings, str]:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@config_option
@click.option("--host", default=None, help="Interface to bind (default from config: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from config: 4000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Start the gateway."""
    import uvicorn

    from gateway.app import create_app, hold_blas_threads
    from gateway.workers import SUPERVISOR_ENV, log_config, warm_up

    # The same configuration here and in every worker uvicorn spawns (it applies it again there).
    logging_config = log_config()
    logging.config.dictConfig(logging_config)
    settings, source = _settings(config_path)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    hold_blas_threads(settings)
    try:
        app = create_app(settings, source=source)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "log_config": logging_config,
        "access_log": False,
        "timeout_keep_alive": settings.server.keep_alive_s,
        "http": "gateway.timeouts:SlowClientProtocol",  # header and body timeouts
    }
    # Several workers: migrate once here, then each worker rebuilds the app from the same file.
    _run(_prepare_store(settings, workers, migrate=workers > 1))
    if workers == 1:
        warm_up()
        uvicorn.run(app, **options)
        return
    if config_path:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    os.environ["RIGHTSIZE_STORE__MIGRATE_ON_START"] = "false"
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # each worker ends when this process does
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=settings.server.worker_start_timeout_s,
        **options,
    )


async def _prepare_store(settings: Settings, workers: int, *, migrate: bool) -> None:
    """Check the workers' pools against the database's connection limit; migrate if asked."""
    from gateway.store import Store
    from gateway.workers import check_connection_budget

    store = Store.connect(settings.store_url())
    try:
        await check_connection_budget(store, workers, settings.store.pool())
        if migrate:
            await store.migrate()
    finally:
        await store.aclose()


@main.group()
def teams() -> None:
    """Manage teams."""


@teams.command("create")
@config_option
@click.argument("name")
def teams_create(config_path: str | None, name: str) -> None:
    """Create a team."""
    import re

    from gateway.admin import TEAM_NAME, open_team

    # The admin API's rule: above all no `~`, which only archived teams' ids contain.
    if not re.fullmatch(TEAM_NAME, name):
        raise click.ClickException(
            "a team name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    team = _with_team_ledger(config_path, lambda store, ledger: open_team(store, ledger, name))
    click.echo(f"created team {team.name}")


@teams.command("list")
@config_option
@click.option("--archived", is_flag=True, help="List deleted teams by their archived id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def teams_list(config_path: str | None, archived: bool, as_json: bool) -> None:
    """List teams (or, with --archived, the deleted ones: reports take their id as --team)."""
    from gateway.admin import archived_team_json, team_json

    if archived:
        found = _with_store(config_path, lambda store: store.archived_teams())
        columns = ["id", "name", "created_at", "deleted_at"]
        _print_rows([archived_team_json(t) for t in found], columns, as_json)
        return
    rows = [team_json(t) for t in _with_store(config_path, lambda store: store.list_teams())]
    _print_rows(rows, ["name", "created_at"], as_json)


@teams.command("delete")
@config_option
@click.argument("name")
def teams_delete(config_path: str | None, name: str) -> None:
    """Delete a team and its keys; its spend rows and budgets are archived under a new id."""
    from gateway.admin import archive_team

    archived = _with_team_ledger(
        config_path, lambda store, ledger: archive_team(store, ledger, name)
    )
    click.echo(f"deleted team {name}; its spend and budgets are archived as {archived.id}")


@main.group()
def keys() -> None:
    """Manage virtual keys."""


@keys.command("create")
@config_option
@click.option("--team", required=True, help="Team the key belongs to.")
@click.option("--name", default=None, help="A label for the key.")
@click.option(
    "--model", "models", multiple=True, help="Restrict the key to this model or tier (repeatable)."
)
def keys_create(
    config_path: str | None, team: str, name: str | None, models: tuple[str, ...]
) -> None:
    """Create a key. Its secret is printed once and never stored."""
    from gateway.auth import KeyService, load_key_secret

    settings, _ = _settings(config_path)
    secret = _config_call(lambda: load_key_secret(settings, os.environ))
    issued = _with_store(
        config_path,
        lambda store: KeyService(store, secret).issue(team, name, list(models) or None),
    )
    click.echo(f"key id: {issued.key.id}\nteam:   {team}\nkey:    {issued.secret}")
    click.echo("Store the key now: Rightsize keeps only its hash.", err=True)


@keys.command("list")
@config_option
@click.option("--team", default=None, help="Only this team's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(config_path: str | None, team: str | None, as_json: bool) -> None:
    """List keys (hints only, never secrets)."""
    from gateway.admin import key_json

    rows = [key_json(k) for k in _with_store(config_path, lambda store: store.list_keys(team))]
    _print_rows(rows, ["id", "team", "name", "key_hint", "revoked_at"], as_json)


@keys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key."""
    _with_store(config_path, lambda store: store.revoke_key(key_id))
    click.echo(f"revoked key {key_id}")


@main.command()
@config_option
@click.argument("prompt")
@click.option("--model", default="auto", show_default=True, help="What the client would send.")
@click.option("--team", default=None, help="Apply this team's policy rules.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def route(
    config_path: str | None, prompt: str, model: str, team: str | None, as_json: bool
) -> None:
    """Show the routing decision for PROMPT, with every candidate and why (no upstream call)."""
    from gateway.routing import explain_route

    settings, source = _settings(config_path)
    report = _config_call(lambda: explain_route(settings, source, prompt, model, team))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    estimate = report["estimate"]
    if estimate:
        click.echo(
            f"demand {estimate['reasoning_demand']:.3f}  budget "
            f"{estimate['token_budget_p50']}/{estimate['token_budget_p90']}  {estimate['category']}"
        )
    if "refusal" in report:
        click.echo(f"refused ({report['refusal']['status']}): {report['refusal']['message']}")
        return
    decision = report["decision"]
    click.echo(f"-> {decision['deployment']} (tier {decision['tier']}): {decision['reason']}")
    for candidate in decision["candidates"]:
        mark = "kept   " if candidate["kept"] else "dropped"
        click.echo(f"   {mark} {candidate['deployment']} [{candidate['tier']}]: {candidate['why']}")


@main.command()
@config_option
@click.option(
    "--traffic",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL sample of real prompts: rows with 'prompt' or 'messages'.",
)
@click.option(
    "--max-share",
    "max_share",
    required=True,
    help="Share of prompts per tier above the first, e.g. reasoning=0.2,standard=0.5.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the configuration with the new thresholds here (default: print them).",
)
def calibrate(config_path: str | None, traffic: str, max_share: str, output: str | None) -> None:
    """Compute tier demand thresholds so that the chosen shares hold on a traffic sample."""
    from gateway.routing import calibrate_policy

    settings, source = _settings(config_path)
    result = _config_call(lambda: calibrate_policy(settings, source, traffic, max_share, output))
    for tier, share in result["shares"].items():
        click.echo(f"{tier:>12}: min_demand {result['thresholds'][tier]:.4f}  share {share:.1%}")
    if output:
        click.echo(f"wrote {output}")


def _with_store(config_path: str | None, action: Callable[[Any], Awaitable[_T]]) -> _T:
    from gateway.store import Conflict, Missing, Store

    settings, _ = _settings(config_path)

    async def run() -> _T:
        store = Store.connect(settings.store_url())
        try:
            await store.migrate()
            return await action(store)
        finally:
            await store.aclose()

    try:
        return _run(run())
    except (Conflict, Missing) as exc:
        raise click.ClickException(str(exc)) from None


def _with_team_ledger(config_path: str | None, action: Callable[[Any, Any], Awaitable[_T]]) -> _T:
    """Run a team verb that also clears the team's ledger counters (store, ledger)."""
    from gateway.ledger.build import open_ledger

    def with_ledger(store: Any) -> Awaitable[_T]:
        async def run() -> _T:
            ledger = open_ledger(_settings(config_path)[0], store)
            try:
                return await action(store, ledger)
            finally:
                await ledger.aclose()

        return run()

    return _with_store(config_path, with_ledger)


def _config_call(action: Callable[[], _T]) -> _T:
    try:
        return action()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run(coro: Awaitable[_T]) -> _T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c) or "")) for r in rows)) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row.get(c) or "").ljust(widths[c]) for c in columns))


def _add_router_commands() -> None:
    from router.cli import classify, eval_cmd, train

    for command in (train, eval_cmd, classify):
        main.add_command(command)


_add_router_commands()


# Budgets and reports live with the ledger (gateway/ledger/cli.py).
main.add_command(ledger_cli.budgets)
main.add_command(ledger_cli.report)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
