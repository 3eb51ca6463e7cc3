"""The `rightsize` command line (the `gateway.cli:main` entry point).

Fast to start: `commands.py` imports click and `support.py` only; each command imports what it
runs, and the router's and the ledger's commands (`router.cli`, `budgets.py`) are imported only
when one of them runs.
"""

from gateway.cli.commands import main

__all__ = ["main"]
