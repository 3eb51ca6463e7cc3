"""`rightsize eval --spend-log`: the router scored on logged traffic joined with outcomes.

The router's `eval` command (router/cli.py) scores prompts it estimates itself; the router may
not read the gateway's database, so this module adds the options that do to that command and
hands every other run to it unchanged. The outcomes file and the scoring are the router's
(router/training/logged.py); the join with the spend log is done here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.support import load_config, run
from router.cli import eval_cmd as _router_eval

if TYPE_CHECKING:
    from gateway.store import SpendRecord
    from router.training.logged import LoggedEstimate, OutcomeRow

_OPTIONS: list[click.Parameter] = [
    click.Option(
        ["--spend-log", "spend_log"],
        is_flag=True,
        help="Score the router's estimates logged in the spend log instead of estimating "
        "prompts: joins --outcomes with the logged requests by request_id (docs/router.md).",
    ),
    click.Option(
        ["--outcomes", "outcomes_path"],
        default=None,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help='With --spend-log: JSON lines {"request_id", "weak", "strong", '
        '"strong_tokens"?, "group"?}.',
    ),
    click.Option(
        ["--store", "store_url"],
        default=None,
        help="With --spend-log: the gateway's database URL (default: the configuration's).",
    ),
    click.Option(
        ["--config", "config_path"],
        type=click.Path(dir_okay=False),
        default=None,
        help="With --spend-log: the YAML configuration whose store to read (default: "
        "$RIGHTSIZE_CONFIG, else built-in defaults).",
    ),
]


def _eval(**options: Any) -> None:
    spend_log = options.pop("spend_log")
    outcomes: Path | None = options.pop("outcomes_path")
    store_url: str | None = options.pop("store_url")
    config_path: str | None = options.pop("config_path")
    if not spend_log:
        if outcomes is not None or store_url is not None or config_path is not None:
            raise click.UsageError("--outcomes, --store and --config go with --spend-log")
        click.get_current_context().invoke(_router_eval, **options)
        return
    if outcomes is None:
        raise click.UsageError("--spend-log needs --outcomes FILE")
    if any(options.get(name) for name in ("data_dir", "pairs_path", "loso")):
        raise click.UsageError("--spend-log scores logged estimates: drop --data, --pairs, --loso")
    if store_url is None:
        store_url = load_config(config_path)[0].store_url()
    elif config_path is not None:
        raise click.UsageError("give --store URL or --config FILE, not both")
    score_spend_log(store_url, outcomes)


def score_spend_log(store_url: str, outcomes_path: Path) -> None:
    """Print the metric table of the logged estimates of the outcomes' requests."""
    from router.training.evaluate import markdown_table
    from router.training.logged import OutcomeFileError, evaluate_logged, load_outcomes

    try:
        outcomes = load_outcomes(outcomes_path)  # a bad row fails before the database is read
    except OutcomeFileError as exc:
        raise click.ClickException(str(exc)) from None
    records = run(_logged_rows(store_url, [o.request_id for o in outcomes]))
    joined = join_outcomes(outcomes, records)
    click.echo(
        f"joined {len(joined.pairs)} of {len(outcomes)} outcomes with a logged estimate "
        f"({joined.missing} not in the spend log, {joined.unestimated} logged without an "
        "estimate: cache hits or refused before routing)",
        err=True,
    )
    if len(joined.pairs) < 2:
        raise click.ClickException("fewer than two outcomes joined: nothing to rank")
    artifacts = Counter(r.router_artifact for r in joined.records)
    configs = Counter(r.config_hash for r in joined.records)
    click.echo(
        f"router artifacts: {_counts(artifacts)}; configurations: {_counts(configs)}", err=True
    )
    if len(artifacts) > 1:
        click.echo("warning: the rows mix router artifacts; the score is of their mix", err=True)
    click.echo(markdown_table(evaluate_logged(joined.pairs)))


@dataclass(frozen=True, slots=True)
class Joined:
    """The outcomes that have a logged estimate, and how many have none."""

    pairs: list[tuple[OutcomeRow, LoggedEstimate]]  # in the outcomes file's order
    records: list[SpendRecord]  # the spend row of each pair
    missing: int  # request ids with no spend row at all
    unestimated: int  # request ids logged only without an estimate (cache hit, refused early)


def join_outcomes(outcomes: list[OutcomeRow], records: list[SpendRecord]) -> Joined:
    """Each outcome with its request's latest logged estimate (a reused request id: the newest
    row that has one)."""
    from router.training.logged import LoggedEstimate

    latest: dict[str, SpendRecord] = {}
    logged: set[str] = set()
    for record in records:  # oldest first
        logged.add(record.request_id)
        if record.reasoning_demand is not None:
            latest[record.request_id] = record
    pairs, used = [], []
    for outcome in outcomes:
        found = latest.get(outcome.request_id)
        if found is None:
            continue
        demand, p50, p90 = found.reasoning_demand, found.token_budget_p50, found.token_budget_p90
        # Written together from one estimate (gateway/pipeline/call.py).
        assert demand is not None and p50 is not None and p90 is not None
        pairs.append((outcome, LoggedEstimate(demand, p50, p90, found.prompt_tokens)))
        used.append(found)
    missing = sum(1 for o in outcomes if o.request_id not in logged)
    return Joined(pairs, used, missing, len(outcomes) - len(pairs) - missing)


async def _logged_rows(store_url: str, request_ids: list[str]) -> list[SpendRecord]:
    from gateway.store import Store

    store = Store.connect(store_url)
    try:
        return await store.spend_of_requests(request_ids)
    finally:
        await store.aclose()


def _counts(counter: Counter[str | None]) -> str:
    return ", ".join(f"{key or 'none'} ({n})" for key, n in counter.most_common())


eval_cmd = click.Command(
    name=_router_eval.name,
    callback=_eval,
    params=[*_router_eval.params, *_OPTIONS],
    help=_router_eval.help,
    short_help=_router_eval.short_help,
)
