"""What every `rightsize` command module shares: the --config option, loading, output.

Light on purpose (click only at import): `rightsize --help` imports this and the command
modules, and the gateway's runtime is imported inside the commands that need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from gateway.settings import Settings

_T = TypeVar("_T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    # gateway.settings.CONFIG_ENV, spelled out: that module is too heavy for --help to import.
    help="YAML configuration file (default: $RIGHTSIZE_CONFIG, else built-in defaults).",
)


def load_config(config_path: str | None) -> tuple[Settings, str]:
    """The validated settings and where they came from; a bad file is a usage error."""
    from gateway.settings import load_settings

    return config_call(lambda: load_settings(config_path))


def config_call(action: Callable[[], _T]) -> _T:
    """Run `action`, reporting a configuration error as the command's error message."""
    from gateway.settings import ConfigError

    try:
        return action()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    import asyncio  # 15 ms that --help need not pay

    return asyncio.run(coro)


def print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    """Rows as JSON, or as a table of the given columns."""
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
