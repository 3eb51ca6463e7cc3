"""`rightsize config import`: a LiteLLM proxy configuration as a Rightsize one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group("config")
def config() -> None:
    """Configuration tools: import a LiteLLM proxy config."""


@config.command("import")
@click.argument("litellm_config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the Rightsize configuration here (default: standard output).",
)
def import_config(litellm_config: str, out: str | None) -> None:
    """Turn a LiteLLM proxy config (model_list and its settings) into a Rightsize config.

    What cannot be carried is listed on standard error and at the top of the output, never
    dropped silently. The result is validated as `rightsize serve` would before it is written.
    """
    import yaml

    from gateway.litellm_import import import_litellm
    from gateway.llm import model_cost_table, model_info
    from gateway.settings import ConfigError, Settings, build_catalog

    try:
        source = yaml.safe_load(Path(litellm_config).read_text()) or {}
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{litellm_config}: not valid YAML: {exc}") from None
    if not isinstance(source, dict):
        raise click.ClickException(f"{litellm_config}: the top level must be a mapping")

    def mode_of(model: str) -> str | None:
        entry = model_cost_table().get(model)
        return entry.get("mode") if isinstance(entry, dict) else None

    imported = import_litellm(source, model_info, mode_of)
    try:
        build_catalog(Settings.model_validate(imported.config), model_info, "the imported config")
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(f"the imported configuration does not validate: {exc}") from None
    text = _render(litellm_config, imported.config, [str(n) for n in imported.notes])
    if out is None:
        click.echo(text, nl=False)
    else:
        Path(out).write_text(text)
    lost = imported.not_carried
    for note in imported.notes:
        click.echo(("not carried  " if not note.carried else "reshaped     ") + str(note), err=True)
    click.echo(
        f"{len(imported.config['models'])} models imported; {len(lost)} settings not carried"
        + (f"; written to {out}" if out else ""),
        err=True,
    )


def _render(source: str, config: dict[str, Any], notes: list[str]) -> str:
    import yaml

    header = [f"# Imported by `rightsize config import` from {source}."]
    if notes:
        header.append("# Read these notes: what was reshaped, and what was not carried.")
        header += [f"#   {line}" for note in notes for line in note.splitlines()]
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body
