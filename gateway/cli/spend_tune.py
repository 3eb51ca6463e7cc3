"""`rightsize tune --spend-log`: token budgets per deployment refitted on logged traffic.

The fitting and the artifact are the router's (router/training/spend_budgets.py); reading and
filtering the spend log is done here (the command: gateway/cli/tune.py).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.cli.support import run

if TYPE_CHECKING:
    from gateway.store import SpendRecord
    from router.training.spend_budgets import LoggedAnswer


@dataclass
class Usable:
    """The rows a refit may learn from, and how many were left out and why."""

    answers: list[LoggedAnswer] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)


def usable_answers(records: list[SpendRecord], artifact: str) -> Usable:
    """Served, metered answers estimated by this artifact; the rest counted by reason.

    Left out: cache hits (no upstream answer), errors, usage the gateway estimated (not the
    upstream's count), empty answers (no length to learn), rows of another artifact (another
    artifact's budgets), rows without a deployment or category.
    """
    from router.training.spend_budgets import LoggedAnswer

    usable = Usable()
    for r in records:
        if r.cache_hit:
            usable.excluded["cache hits"] += 1
        elif r.error_type is not None or r.status >= 400:
            usable.excluded["errors"] += 1
        elif r.usage_estimated:
            usable.excluded["usage estimated"] += 1
        elif r.completion_tokens <= 0:
            usable.excluded["empty answers"] += 1
        elif r.router_artifact != artifact:
            usable.excluded["other router artifacts"] += 1
        elif r.deployment is None or r.category is None or r.token_budget_p90 is None:
            usable.excluded["no deployment or category"] += 1
        else:
            assert r.token_budget_p50 is not None  # the query keeps estimated rows only
            usable.answers.append(
                LoggedAnswer(
                    r.deployment,
                    r.category,
                    r.token_budget_p50,
                    r.token_budget_p90,
                    r.completion_tokens,
                )
            )
    return usable


def tune_from_spend_log(
    store_url: str,
    out_dir: Path,
    artifact_dir: Path | None,
    date: str,
    *,
    since: dt.datetime | None = None,
    team: str | None = None,
    deployment: str | None = None,
) -> None:
    """Refit the base artifact's budgets per deployment on the log; write the new artifact."""
    from router.artifact import artifact_id, default_artifact_dir, read_manifest
    from router.deployment_budgets import DeploymentBudgets
    from router.training.spend_budgets import (
        report_table,
        tune_spend_log,
        tuned_budgets_block,
        write_spend_tuned_artifact,
    )

    if out_dir.exists() and any(out_dir.iterdir()):
        raise click.UsageError(f"{out_dir} is not empty; tune writes a new artifact directory")
    base_dir = artifact_dir or default_artifact_dir()
    base_id = artifact_id(base_dir)
    records = run(_served(store_url, since, team, deployment))
    usable = usable_answers(records, base_id)
    left_out = ", ".join(f"{n} {why}" for why, n in sorted(usable.excluded.items())) or "none"
    click.echo(
        f"{len(usable.answers)} of {len(records)} logged estimates usable "
        f"(router artifact {base_id}); left out: {left_out}",
        err=True,
    )
    if not usable.answers:
        raise click.ClickException(
            "no usable rows: the log holds none of this artifact's served answers "
            "(pass --artifact DIR, the artifact that served them)"
        )

    def progress(fit: Any, number: int, total: int) -> None:
        click.echo(f"[{number}/{total}] {fit.deployment}: {fit.rows} rows, {fit.reason}", err=True)

    outcome = tune_spend_log(
        usable.answers, DeploymentBudgets.from_manifest(read_manifest(base_dir)), progress=progress
    )
    source = {
        "since": since.isoformat() if since is not None else None,
        "team": team,
        "deployment": deployment,
        "excluded": dict(sorted(usable.excluded.items())),
    }
    block = tuned_budgets_block(outcome, base_dir, date, source)
    write_spend_tuned_artifact(base_dir, out_dir, outcome, block)
    click.echo(report_table(outcome.fits))
    click.echo(f"wrote {out_dir}", err=True)


async def _served(
    store_url: str, since: dt.datetime | None, team: str | None, deployment: str | None
) -> list[SpendRecord]:
    from gateway.store import Store

    store = Store.connect(store_url)
    try:
        return await store.spend_served(since=since, team=team, deployment=deployment)
    finally:
        await store.aclose()
