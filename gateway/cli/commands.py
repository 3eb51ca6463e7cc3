"""The `rightsize` group and the gateway's own commands (serve, route, config, teams, keys).

Fast to start: this module imports click and nothing heavy; each command imports what it
runs, and the router's and the ledger's commands are imported only when one of them runs.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway.cli.support import config_call, config_option, load_config, print_rows, run

if TYPE_CHECKING:
    from gateway.settings import Settings

_T = TypeVar("_T")


class LazyGroup(click.Group):
    """A group some of whose commands live in other modules, imported when one runs.

    Each is named by "module:attribute" with its one-line help, so that `--help` lists it
    without importing it (the router's commands would bring numpy).
    """

    def __init__(self, *args: Any, lazy: Mapping[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing, with the recorded help standing in for commands not yet imported.
        commands: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                commands.append((name, click.Command(name, help=self.lazy[name][1])))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in commands])


# Commands defined elsewhere: "module:attribute" and the command's own one-line help (a test
# checks that these match what the commands say once imported).
LAZY_COMMANDS = {
    "budgets": (
        "gateway.cli.budgets:budgets",
        "Manage budgets and rate limits of teams and keys.",
    ),
    "classify": (
        "router.cli:classify",
        'Estimate every {"id", "prompt"} row of a JSONL file; bad rows become {"id", "error"} '
        "rows.",
    ),
    "config": (
        "gateway.cli.config_import:config",
        "Configuration tools: import a LiteLLM proxy config.",
    ),
    "eval": (
        # The router's command, with --spend-log (which reads the gateway's database) added.
        "gateway.cli.spend_eval:eval_cmd",
        "Print routing and budget metrics per group, with random and prompt-length baselines.",
    ),
    "report": (
        "gateway.cli.budgets:report",
        "Cost, savings and routing reports from the spend log.",
    ),
    "tune": (
        # The router's command, with --spend-log and --store (which read the gateway's database).
        "gateway.cli.tune:tune_cmd",
        "Adapt demand and budgets to your outcomes; keep the base unless CV shows a gain.",
    ),
    "train": (
        "router.cli:train",
        "Train the router heads (and the static encoder); write the artifact and model card.",
    ),
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.version_option(package_name="rightsize-gateway")
def main() -> None:
    """Rightsize: route each LLM request to the right-size model, within budget."""


@main.command()
@config_option
@click.option("--host", default=None, help="Interface to bind (default from config: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from config: 4000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Start the gateway."""
    import logging.config

    import uvicorn

    from gateway.app import create_app, hold_blas_threads
    from gateway.metrics import MULTIPROC_ENV, prepare_multiproc_dir
    from gateway.settings import CONFIG_ENV
    from gateway.workers import (
        SUPERVISOR_ENV,
        WORKERS_ENV,
        PendingReload,
        Supervisor,
        log_config,
        warm_up,
    )

    # A SIGHUP while the app is built is taken up once it serves, not the end of the process
    # (with workers, the supervisor's own handler replaces this before any worker starts).
    pending_reload = PendingReload()
    pending_reload.install()
    settings, source = load_config(config_path)
    # The same configuration here and in every worker uvicorn spawns (it applies it again there).
    logging_config = log_config(settings.server.log_format)
    logging.config.dictConfig(logging_config)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    hold_blas_threads(settings)
    given_metrics_dir = os.environ.get(MULTIPROC_ENV)
    if given_metrics_dir and settings.server.metrics:
        # The operator's directory, emptied before any series of this run writes there: an
        # earlier run's files would be summed into this one's counters.
        prepare_multiproc_dir(Path(given_metrics_dir))
    app = config_call(
        lambda: create_app(
            settings,
            source=source,
            freeze_gc=True,
            drain_on_sigterm=True,
            config_file=config_path or os.environ.get(CONFIG_ENV),
            pending_reload=pending_reload,
        )
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "log_config": logging_config,
        "access_log": False,
        "timeout_keep_alive": settings.server.keep_alive_s,
        "http": "gateway.timeouts:SlowClientProtocol",  # header and body timeouts
        # After SIGTERM's drain (gateway/shutdown.py): how long requests in flight may finish.
        "timeout_graceful_shutdown": settings.server.shutdown_timeout_s,
    }
    # Several workers: migrate once here, then each worker rebuilds the app from the same file.
    run(_prepare_store(settings, workers, migrate=workers > 1 and settings.store.migrate_on_start))
    if workers == 1:
        warm_up()
        uvicorn.run(app, **options)
        return
    if config_path:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    os.environ["RIGHTSIZE_STORE__MIGRATE_ON_START"] = "false"
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # each worker ends when this process does
    os.environ[WORKERS_ENV] = str(workers)
    with shared_metrics_dir(settings.server.metrics and not given_metrics_dir):
        # uvicorn.run's own path for several workers, with our supervisor: SIGHUP hot-reloads
        # every worker instead of restarting each (gateway/workers.py).
        supervised = uvicorn.Config(
            "gateway.app:app_from_env",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=settings.server.worker_start_timeout_s,
            **options,
        )
        Supervisor(supervised, sockets=[supervised.bind_socket()]).run()


@contextmanager
def shared_metrics_dir(enabled: bool) -> Iterator[None]:
    """A prometheus-client multiprocess directory of this run's own, for its workers.

    Set in the environment before any worker is spawned: each imports the library with it set
    (the library picks its mode at import), and every worker's series are summed there. Made
    empty, removed when `serve` ends (or by the next `serve`, after a SIGKILL). This process's
    own app was built before: its series stay in memory, and it serves no request.
    """
    import shutil

    from gateway.metrics import MULTIPROC_ENV, new_multiproc_dir

    if not enabled:
        yield
        return
    directory = new_multiproc_dir()
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


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


@main.command()
@config_option
@click.option(
    "--check", is_flag=True, help="Change nothing: exit 1 unless the schema is this release's."
)
def migrate(config_path: str | None, check: bool) -> None:
    """Bring the store's schema to this release's (the deployment's migration Job)."""
    from gateway.store import SchemaError, SchemaState, Store

    settings, _ = load_config(config_path)

    async def migrate_store() -> tuple[str | None, SchemaState]:
        store = Store.connect(settings.store_url())
        try:
            async with store.engine.connect() as conn:
                before = (await conn.run_sync(_schema_state)).current
            return before, await (store.check_schema() if check else store.migrate())
        finally:
            await store.aclose()

    try:
        before, after = run(migrate_store())
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    if before == after.current:
        click.echo(f"schema at revision {after.current}: up to date")
    else:
        click.echo(f"schema migrated from revision {before or 'none'} to {after.current}")


def _schema_state(connection: Any) -> Any:
    from gateway.store.schema import schema_state

    return schema_state(connection)


@main.group()
def teams() -> None:
    """Manage teams."""


@teams.command("create")
@config_option
@click.argument("name")
@click.option(
    "--latency-class",
    type=click.Choice(["interactive", "batch", "background"]),
    default=None,
    help="The team's default latency class (default: the policy's).",
)
def teams_create(config_path: str | None, name: str, latency_class: str | None) -> None:
    """Create a team."""
    import re

    from gateway.api.admin import TEAM_NAME, open_team

    # The admin API's rule: above all no `~`, which only archived teams' ids contain.
    if not re.fullmatch(TEAM_NAME, name):
        raise click.ClickException(
            "a team name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    team = _with_team_ledger(
        config_path, lambda store, ledger: open_team(store, ledger, name, latency_class)
    )
    click.echo(f"created team {team.name}")


@teams.command("list")
@config_option
@click.option("--archived", is_flag=True, help="List deleted teams by their archived id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def teams_list(config_path: str | None, archived: bool, as_json: bool) -> None:
    """List teams (or, with --archived, the deleted ones: reports take their id as --team)."""
    from gateway.api.admin import archived_team_json, team_json

    if archived:
        found = _with_store(config_path, lambda store: store.archived_teams())
        columns = ["id", "name", "created_at", "deleted_at"]
        print_rows([archived_team_json(t) for t in found], columns, as_json)
        return
    rows = [team_json(t) for t in _with_store(config_path, lambda store: store.list_teams())]
    print_rows(rows, ["name", "created_at", "latency_class"], as_json)


@teams.command("delete")
@config_option
@click.argument("name")
def teams_delete(config_path: str | None, name: str) -> None:
    """Delete a team and its keys; its spend rows and budgets are archived under a new id."""
    from gateway.api.admin import archive_team

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

    settings, _ = load_config(config_path)
    secret = config_call(lambda: load_key_secret(settings, os.environ))
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
    from gateway.api.admin import key_json

    rows = [key_json(k) for k in _with_store(config_path, lambda store: store.list_keys(team))]
    print_rows(rows, ["id", "team", "name", "key_hint", "revoked_at"], as_json)


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
    from gateway.llm import model_info
    from gateway.routing import explain_route
    from gateway.settings import build_catalog

    settings, source = load_config(config_path)
    report = config_call(lambda: explain_route(settings, source, prompt, model, team))
    catalog = config_call(lambda: build_catalog(settings, model_info, source))
    # Which thresholds are in force: the shipped ones, the artifact's own, or the file's.
    report["auto"] = settings.describe_auto(source, settings.default_route(catalog))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(report["auto"])
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
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL sample of real prompts: rows with 'prompt' or 'messages'.",
)
@click.option(
    "--max-share",
    "max_share",
    default=None,
    help="With --traffic: share of prompts per tier above the first, e.g. "
    "reasoning=0.2,standard=0.5.",
)
@click.option(
    "--outcomes",
    is_flag=True,
    help="Instead of --traffic: the shadow-judged outcomes in the configured store.",
)
@click.option(
    "--keep",
    type=float,
    default=0.95,
    show_default=True,
    help="With --outcomes: the share of the strong tier's judged quality to keep.",
)
@click.option("--team", default=None, help="With --outcomes: only this team's outcomes.")
@click.option(
    "--since", type=click.DateTime(["%Y-%m-%d"]), default=None, help="With --outcomes (UTC day)."
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="With --outcomes: up to this UTC day, exclusive.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the configuration with the new thresholds here (default: print them).",
)
def calibrate(
    config_path: str | None,
    traffic: str | None,
    max_share: str | None,
    outcomes: bool,
    keep: float,
    team: str | None,
    since: Any,
    until: Any,
    output: str | None,
) -> None:
    """Compute tier demand thresholds: chosen shares on a traffic sample, or (--outcomes) the
    least strong-tier traffic that keeps --keep of its judged quality."""
    from gateway.routing import calibrate_from_outcomes, calibrate_policy

    settings, source = load_config(config_path)
    if outcomes:
        if traffic or max_share:
            raise click.UsageError("give --traffic with --max-share, or --outcomes, not both")
        found = _with_store(
            config_path,
            lambda store: store.outcomes(team=team, since=_utc(since), until=_utc(until)),
        )
        picked = config_call(lambda: calibrate_from_outcomes(settings, source, found, keep, output))
        for tier, c in picked["tiers"].items():
            click.echo(
                f"{tier:>12}: min_demand {c['threshold']:.4f}  share {c['strong_share']:.1%}  "
                f"quality {c['quality']:.3f} of {c['strong_quality']:.3f} "
                f"({c['prompts']} judged prompts)"
            )
        if picked["skipped"]:
            click.echo(f"skipped {picked['skipped']} outcomes without a verdict or a demand")
    else:
        if not traffic or not max_share:
            raise click.UsageError("give --traffic with --max-share, or --outcomes")
        result = config_call(lambda: calibrate_policy(settings, source, traffic, max_share, output))
        for tier, share in result["shares"].items():
            click.echo(
                f"{tier:>12}: min_demand {result['thresholds'][tier]:.4f}  share {share:.1%}"
            )
    if output:
        click.echo(f"wrote {output}")


def _utc(day: Any) -> Any:
    from datetime import UTC

    return None if day is None else day.replace(tzinfo=UTC)


def _with_store(config_path: str | None, action: Callable[[Any], Awaitable[_T]]) -> _T:
    from gateway.store import Conflict, Missing, Store

    settings, _ = load_config(config_path)

    async def with_store() -> _T:
        store = Store.connect(settings.store_url())
        try:
            await store.migrate()
            return await action(store)
        finally:
            await store.aclose()

    try:
        return run(with_store())
    except (Conflict, Missing) as exc:
        raise click.ClickException(str(exc)) from None


def _with_team_ledger(config_path: str | None, action: Callable[[Any, Any], Awaitable[_T]]) -> _T:
    """Run a team verb that also clears the team's ledger counters (store, ledger)."""
    from gateway.ledger_build import open_ledger

    def with_ledger(store: Any) -> Awaitable[_T]:
        async def with_ledger_open() -> _T:
            ledger = open_ledger(load_config(config_path)[0], store)
            try:
                return await action(store, ledger)
            finally:
                await ledger.aclose()

        return with_ledger_open()

    return _with_store(config_path, with_ledger)
