"""`python -m router train|eval|tune|classify`: the router's commands without the gateway's CLI."""

from __future__ import annotations

import click

from router.cli import classify, eval_cmd, train, tune


@click.group()
def main() -> None:
    """Rightsize router commands."""


main.add_command(train)
main.add_command(eval_cmd)
main.add_command(tune)
main.add_command(classify)

if __name__ == "__main__":
    main()
