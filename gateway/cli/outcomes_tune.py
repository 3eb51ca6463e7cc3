"""`rightsize tune --store`: the router tuned on the shadow-judged outcomes in the database.

The router's `tune` (router/cli.py) reads a pairs file; the router may not read the gateway's
database, so this module reads `router_outcomes` (docs/shadow.md) into that file's rows and hands
the run to the router's command.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from gateway.cli.support import load_config, run
from router.cli import tune as _router_tune

if TYPE_CHECKING:
    from gateway.store import OutcomeRecord

# The judge's verdict as the two tiers' quality on the prompt (`eval --pairs` rows).
_QUALITY = {"strong": (0.0, 1.0), "light": (1.0, 0.0), "tie": (1.0, 1.0)}

_OPTIONS: list[click.Parameter] = [
    click.Option(
        ["--store", "from_store"],
        is_flag=True,
        help="Tune on the judged outcomes of shadow evaluation (router_outcomes) instead of "
        "--pairs: rows with their prompt text and a verdict (docs/shadow.md).",
    ),
    click.Option(
        ["--store-url", "store_url"],
        default=None,
        help="With --store: the gateway's database URL (default: the configuration's).",
    ),
    click.Option(
        ["--config", "config_path"],
        type=click.Path(dir_okay=False),
        default=None,
        help="With --store: the YAML configuration whose store to read.",
    ),
    click.Option(["--team", "team"], default=None, help="With --store: one team's outcomes."),
]


def pair_rows(outcomes: Sequence[OutcomeRecord]) -> list[dict[str, Any]]:
    """`eval --pairs` rows: strong -> weak 0, strong 1; light -> 1, 0; tie -> 1, 1. Rows with no
    verdict or no prompt text are left out."""
    rows = []
    for outcome in outcomes:
        if outcome.verdict not in _QUALITY or not outcome.prompt_text:
            continue
        weak, strong = _QUALITY[outcome.verdict]
        row: dict[str, Any] = {"prompt": outcome.prompt_text, "weak": weak, "strong": strong}
        if outcome.strong_completion_tokens:
            row["strong_tokens"] = outcome.strong_completion_tokens
        if outcome.category:
            row["group"] = outcome.category
        rows.append(row)
    return rows


def _tune(**options: Any) -> None:
    from_store = options.pop("from_store")
    store_url: str | None = options.pop("store_url")
    config_path: str | None = options.pop("config_path")
    team: str | None = options.pop("team")
    context = click.get_current_context()
    if not from_store:
        if store_url is not None or config_path is not None or team is not None:
            raise click.UsageError("--store-url, --config and --team go with --store")
        if options.get("pairs_path") is None:
            raise click.UsageError("give --pairs FILE or --store")
        context.invoke(_router_tune, **options)
        return
    if options.get("pairs_path") is not None:
        raise click.UsageError("give --pairs FILE or --store, not both")
    if store_url is None:
        store_url = load_config(config_path)[0].store_url()
    elif config_path is not None:
        raise click.UsageError("give --store-url URL or --config FILE, not both")
    outcomes = run(_outcomes(store_url, team))
    rows = pair_rows(outcomes)
    click.echo(
        f"{len(rows)} of {len(outcomes)} judged outcomes usable (a verdict and the prompt text)",
        err=True,
    )
    if not rows:
        raise click.ClickException("no judged outcome with its prompt text to tune on")
    with tempfile.TemporaryDirectory(prefix="rightsize-tune-") as tmp:
        pairs = Path(tmp) / "router_outcomes.jsonl"
        pairs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        context.invoke(_router_tune, **{**options, "pairs_path": pairs})


async def _outcomes(store_url: str, team: str | None) -> list[OutcomeRecord]:
    from gateway.store import Store

    store = Store.connect(store_url)
    try:
        return await store.outcomes(team=team)
    finally:
        await store.aclose()


def _optional(param: click.Parameter) -> click.Parameter:
    if param.name == "pairs_path":
        assert isinstance(param, click.Option)
        return click.Option(
            [*param.opts, param.name],
            type=param.type,
            default=None,
            help=f"{param.help} Or --store.",
        )
    return param


tune_cmd = click.Command(
    name=_router_tune.name,
    callback=_tune,
    params=[*map(_optional, _router_tune.params), *_OPTIONS],
    help=_router_tune.help,
    short_help=_router_tune.short_help,
)
