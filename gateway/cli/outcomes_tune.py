"""`rightsize tune --store`: the router tuned on the shadow-judged outcomes in the database.

The router's `tune` (router/cli.py) reads a pairs file; the router may not read the gateway's
database, so this module reads `router_outcomes` (docs/shadow.md) into that file's rows and hands
the run to the router's command (the command: gateway/cli/tune.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from gateway.cli.support import run
from router.cli import tune as _router_tune

if TYPE_CHECKING:
    from gateway.store import OutcomeRecord

# The judge's verdict as the two tiers' quality on the prompt (`eval --pairs` rows).
_QUALITY = {"strong": (0.0, 1.0), "light": (1.0, 0.0), "tie": (1.0, 1.0)}


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


def tune_from_outcomes(options: dict[str, Any], store_url: str, team: str | None) -> None:
    """Run the router's tune on the judged outcomes of the store, as a pairs file."""
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
        click.get_current_context().invoke(_router_tune, **{**options, "pairs_path": pairs})


async def _outcomes(store_url: str, team: str | None) -> list[OutcomeRecord]:
    from gateway.store import Store

    store = Store.connect(store_url)
    try:
        return await store.outcomes(team=team)
    finally:
        await store.aclose()
