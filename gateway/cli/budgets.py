"""`rightsize budgets ...` and `rightsize report ...`: the admin API's budget and report verbs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from gateway.api.budgets import BudgetIn, budget_json
from gateway.cli.support import config_call, config_option, load_config, print_rows, run
from gateway.ledger_build import open_ledger
from gateway.settings import Settings, build_catalog
from gateway.store import Store
from ledger.ledger import Ledger, usage_json
from ledger.periods import Period
from ledger.reports import GROUPINGS, cost_report, routing_report, savings_report, to_csv
from policies import Deployment

_T = TypeVar("_T")


def _with_ledger(
    config_path: str | None, action: Callable[[Settings, Store, Ledger], Awaitable[_T]]
) -> _T:
    settings, _ = load_config(config_path)

    async def with_ledger() -> _T:
        store = Store.connect(settings.store_url())
        ledger = open_ledger(settings, store)
        try:
            await store.migrate()
            return await action(settings, store, ledger)
        finally:
            await ledger.aclose()
            await store.aclose()

    return run(with_ledger())


@click.group()
def budgets() -> None:
    """Manage budgets and rate limits of teams and keys."""


@budgets.command("set")
@config_option
@click.option("--team", default=None, help="The team's budget.")
@click.option("--key", "key_id", default=None, help="A key's budget (key id).")
@click.option("--period", type=click.Choice([p.value for p in Period]), required=True)
@click.option("--limit-usd", default=None, help="USD per period (a decimal, e.g. 250.00).")
@click.option("--limit-tokens", type=int, default=None, help="Tokens per period.")
@click.option("--limit-requests", type=int, default=None, help="Requests per period.")
@click.option("--mode", type=click.Choice(["hard", "soft"]), default="hard")
@click.option("--soft-at", type=int, default=None, help="Soft budgets: percent that degrades.")
@click.option("--alert", "alerts", type=int, multiple=True, help="Alert at this percent.")
def budgets_set(config_path: str | None, **options: Any) -> None:
    """Create or replace the budget of a team or key for one period."""
    fields = {
        "team": options["team"],
        "key_id": options["key_id"],
        "period": options["period"],
        "limit_usd": options["limit_usd"],
        "limit_tokens": options["limit_tokens"],
        "limit_requests": options["limit_requests"],
        "mode": options["mode"],
        "soft_at_percent": options["soft_at"],
        "alert_percents": list(options["alerts"]),
    }
    try:
        budget = BudgetIn.model_validate(fields).budget()
    except ValidationError as exc:
        raise click.ClickException(exc.errors()[0]["msg"]) from None

    async def put(_: Settings, store: Store, ledger: Ledger) -> None:
        if budget.scope == "team" and budget.subject not in {
            t.name for t in await store.list_teams()
        }:
            raise click.ClickException(f"team {budget.subject!r} does not exist")
        await ledger.budgets.put(budget)

    _with_ledger(config_path, put)
    click.echo(f"set budget {budget.id}")


@budgets.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def budgets_list(config_path: str | None, as_json: bool) -> None:
    """List budgets."""

    async def find(_: Settings, __: Store, ledger: Ledger) -> list[dict[str, Any]]:
        return [budget_json(b) for b in await ledger.budgets.find()]

    rows = _with_ledger(config_path, find)
    columns = ["id", "limit_usd", "limit_tokens", "limit_requests", "mode"]
    print_rows(rows, columns, as_json)


@budgets.command("delete")
@config_option
@click.argument("budget_id")
def budgets_delete(config_path: str | None, budget_id: str) -> None:
    """Delete a budget by id (e.g. team:search:monthly)."""

    async def delete(_: Settings, __: Store, ledger: Ledger) -> bool:
        return await ledger.budgets.delete(budget_id)

    if not _with_ledger(config_path, delete):
        raise click.ClickException(f"budget {budget_id!r} does not exist")
    click.echo(f"deleted budget {budget_id}")


@budgets.command("usage")
@config_option
@click.argument("team")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def budgets_usage(config_path: str | None, team: str, as_json: bool) -> None:
    """Spent, reserved and remaining in each current window of a team's (and its keys') budgets."""

    async def usage(_: Settings, store: Store, ledger: Ledger) -> list[dict[str, Any]]:
        keys = {k.id for k in await store.list_keys(team)}
        found = [
            b
            for b in await ledger.budgets.find()
            if (b.scope, b.subject) == ("team", team) or (b.scope == "key" and b.subject in keys)
        ]
        return [usage_json(u, team=team) for u in await ledger.usage(found)]

    rows = _with_ledger(config_path, usage)
    columns = ["id", "window", "limit_usd", "spent_usd", "reserved_usd", "remaining_usd"]
    print_rows(rows, columns, as_json)


@click.group()
def report() -> None:
    """Cost, savings and routing reports from the spend log."""


_report_options = [
    click.option("--start", type=click.DateTime(["%Y-%m-%d"]), required=True),
    click.option("--end", type=click.DateTime(["%Y-%m-%d"]), required=True),
    click.option("--team", default=None, help="Only this team."),
    click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table"),
]


def _with_report_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_report_options):
        command = option(command)
    return command


@report.command("costs")
@config_option
@_with_report_options
@click.option("--group-by", default="team", help=f"Comma-separated: {', '.join(GROUPINGS)}.")
def report_costs(
    config_path: str | None, start: Any, end: Any, team: str | None, fmt: str, group_by: str
) -> None:
    """Requests, tokens and exact cost per group, days in the ledger's time zone."""
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    if not groups or any(g not in GROUPINGS for g in groups):
        raise click.ClickException(f"--group-by takes {', '.join(GROUPINGS)}")

    local = _local_deployments(config_path)

    async def build(_: Settings, store: Store, ledger: Ledger) -> dict[str, Any]:
        return await cost_report(
            store.engine, ledger.zone, _day(start), _day(end), groups, team=team, local=local
        )

    _emit(_with_ledger(config_path, build), fmt)


@report.command("savings")
@config_option
@_with_report_options
@click.option("--reference", default=None, help="Reference model (default from the config).")
def report_savings(
    config_path: str | None, start: Any, end: Any, team: str | None, fmt: str, reference: str | None
) -> None:
    """Actual cost against every request priced at a reference model, per team and day."""
    from gateway.llm import model_info

    settings, source = load_config(config_path)
    name = reference or settings.ledger.savings_reference_model
    catalog = config_call(lambda: build_catalog(settings, model_info, source))
    deployment = catalog.get(name) if name else None
    if deployment is None:
        raise click.ClickException("name a configured model with --reference")

    local = [d for d in catalog.deployments if d.local]

    async def build(_: Settings, store: Store, ledger: Ledger) -> dict[str, Any]:
        return await savings_report(
            store.engine,
            ledger.zone,
            _day(start),
            _day(end),
            deployment,
            team=team,
            local=local,
            catalog=catalog.deployments,
        )

    _emit(_with_ledger(config_path, build), fmt)


@report.command("routing")
@config_option
@_with_report_options
def report_routing(
    config_path: str | None, start: Any, end: Any, team: str | None, fmt: str
) -> None:
    """Requests, cache hits and cost per tier, the demand histogram, judged quality per pair
    of tiers at the thresholds in force, and token-budget coverage."""

    async def build(settings: Settings, store: Store, ledger: Ledger) -> dict[str, Any]:
        thresholds = {t.name: t.min_demand for t in settings.policy.tiers}
        return await routing_report(
            store.engine, ledger.zone, _day(start), _day(end), team=team, thresholds=thresholds
        )

    _emit(_with_ledger(config_path, build), fmt)


def _local_deployments(config_path: str | None) -> list[Deployment]:
    from gateway.llm import model_info

    settings, source = load_config(config_path)
    catalog = config_call(lambda: build_catalog(settings, model_info, source))
    return [d for d in catalog.deployments if d.local]


def _day(value: Any) -> date:
    return value.date() if hasattr(value, "date") else value


def _emit(result: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    elif fmt == "csv":
        click.echo(to_csv(result), nl=False)
    else:
        print_rows(result["rows"], result["columns"], as_json=False)
        if "method" in result:
            click.echo(f"\nmethod: {result['method']}")
        latency = result.get("latency_classes")
        if latency is not None:
            for line in latency["rows"]:
                click.echo(
                    f"\nlatency class {line['latency_class']}: {line['requests']} requests, "
                    f"{line['actual_cost_usd']} USD against {line['interactive_cost_usd']} USD "
                    f"interactively, saved {line['savings_usd']} USD"
                )
            for row in latency["unpriced"]:
                click.echo(
                    f"latency class {row['latency_class']}: {row['requests']} requests of "
                    f"{row['deployment']!r} unpriced (not in the catalog)"
                )
        for local in result.get("local", ()):
            cost = "unpriced" if local["cost_usd"] is None else f"{local['cost_usd']} USD"
            click.echo(f"\nlocal {local['deployment']}: {cost}; {local['derivation']}")
        for pair in result.get("judged", ()):
            click.echo(f"\njudged {pair['light_tier']} vs {pair['strong_tier']}: {_judged(pair)}")
        for row in result.get("budget_accuracy", ()):
            click.echo(
                f"\nbudget {row['tier']}/{row['deployment']}: {row['answers']} answers, "
                f"within p50 {_share(row['within_p50'])}, within p90 {_share(row['within_p90'])}"
            )


def _judged(pair: dict[str, Any]) -> str:
    text = (
        f"{pair['judged']} judged ({pair['no_verdict']} without a verdict); strong wins "
        f"{_share(pair['strong_win_rate'])}, light wins {_share(pair['light_win_rate'])}, "
        f"ties {_share(pair['tie_rate'])}"
    )
    if pair["apgr"] is not None:
        text += f"; APGR {_share(pair['apgr'])}, CPT(50%) {_share(pair['cpt50'])}"
    if pair["pgr_at_threshold"] is not None:
        text += (
            f"; at min_demand {pair['threshold']}: {pair['strong_share_at_threshold']:.1%} "
            f"to {pair['strong_tier']}, PGR {_share(pair['pgr_at_threshold'])}"
        )
    return text


def _share(cell: dict[str, Any] | None) -> str:
    """`0.625 [0.31, 0.86]`: a value and its 95% interval."""
    if cell is None:
        return "n/a"
    if cell["low"] is None:
        return f"{cell['value']:.3f}"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"
