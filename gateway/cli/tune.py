"""`rightsize tune`: the router's command (router/cli.py, on a pairs file) with the two sources
only the gateway can read, its database's spend log (`--spend-log`: token budgets per
deployment, gateway/cli/spend_tune.py) and its shadow-judged outcomes (`--store`:
router_outcomes as pairs, gateway/cli/outcomes_tune.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from gateway.cli.support import load_config
from router.cli import tune as _router_tune

_OPTIONS: list[click.Parameter] = [
    click.Option(
        ["--spend-log", "spend_log"],
        is_flag=True,
        help="Refit the token budgets per deployment on the requests the spend log holds "
        "instead of a pairs file (docs/router.md).",
    ),
    click.Option(
        ["--store", "from_store"],
        is_flag=True,
        help="Tune on the judged outcomes of shadow evaluation (router_outcomes) instead of "
        "--pairs: rows with their prompt text and a verdict (docs/shadow.md).",
    ),
    click.Option(
        ["--store-url", "store_url"],
        default=None,
        help="With --spend-log or --store: the gateway's database URL (default: the "
        "configuration's).",
    ),
    click.Option(
        ["--config", "config_path"],
        type=click.Path(dir_okay=False),
        default=None,
        help="With --spend-log or --store: the YAML configuration whose store to read "
        "(default: $RIGHTSIZE_CONFIG, else built-in defaults).",
    ),
    click.Option(
        ["--team"], default=None, help="With --spend-log or --store: only this team's rows."
    ),
    click.Option(
        ["--since"],
        type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
        default=None,
        help="With --spend-log: only rows logged from this UTC date or time on.",
    ),
    click.Option(
        ["--deployment"], default=None, help="With --spend-log: only this deployment's rows."
    ),
]
_DATABASE = ("store_url", "config_path", "team")
_SPEND_ONLY = ("since", "deployment")


def _tune(**options: Any) -> None:
    spend_log, from_store = options.pop("spend_log"), options.pop("from_store")
    extra = {name: options.pop(name) for name in (*_DATABASE, *_SPEND_ONLY)}
    if spend_log and from_store:
        raise click.UsageError("give --spend-log or --store, not both")
    if not (spend_log or from_store):
        if any(v is not None for v in extra.values()):
            raise click.UsageError(
                "--store-url, --config and --team go with --spend-log or --store; "
                "--since and --deployment with --spend-log"
            )
        if options.get("pairs_path") is None:
            raise click.UsageError("give --pairs FILE, --spend-log or --store")
        click.get_current_context().invoke(_router_tune, **options)
        return
    source = "--spend-log" if spend_log else "--store"
    if options.get("pairs_path") is not None:
        raise click.UsageError(f"give --pairs FILE or {source}, not both")
    if from_store and any(extra[name] is not None for name in _SPEND_ONLY):
        raise click.UsageError("--since and --deployment go with --spend-log")
    store_url, config_path = extra["store_url"], extra["config_path"]
    if store_url is None:
        store_url = load_config(config_path)[0].store_url()
    elif config_path is not None:
        raise click.UsageError("give --store-url URL or --config FILE, not both")
    if from_store:
        from gateway.cli.outcomes_tune import tune_from_outcomes

        tune_from_outcomes(options, store_url, extra["team"])
        return
    if options.get("runtime") is not None:
        raise click.UsageError("--spend-log moves budgets of every runtime: drop --runtime")
    from gateway.cli.spend_tune import tune_from_spend_log

    since = extra["since"].replace(tzinfo=dt.UTC) if extra["since"] is not None else None
    tune_from_spend_log(
        store_url,
        options["out_dir"],
        options["artifact_dir"],
        options["date"] or dt.date.today().isoformat(),
        since=since,
        team=extra["team"],
        deployment=extra["deployment"],
    )


tune_cmd = click.Command(
    name=_router_tune.name,
    callback=_tune,
    params=[*_router_tune.params, *_OPTIONS],
    help=_router_tune.help,
    short_help=_router_tune.short_help,
)
