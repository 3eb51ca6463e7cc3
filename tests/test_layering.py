"""The ledger is a domain package: it runs without the gateway, and the gateway answers its
refusals over HTTP exactly as the ledger states them (`.importlinter` checks the imports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.errors import from_ledger
from ledger.errors import BudgetExceeded, BudgetsUnreadable, CountersUnreachable

ROOT = Path(__file__).resolve().parent.parent

# Every module of the package, imported in a fresh interpreter: also what import-linter cannot
# see (an import by name at run time).
_IMPORT_THE_LEDGER = """
import importlib, json, pkgutil, sys
import ledger
for module in pkgutil.walk_packages(ledger.__path__, "ledger."):
    importlib.import_module(module.name)
print(json.dumps(sorted(n for n in sys.modules if n == "gateway" or n.startswith("gateway."))))
"""


def test_importing_every_ledger_module_loads_no_gateway_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_THE_LEDGER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,  # a busy shared host imports slowly
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_budget_refusal_is_answered_with_the_ledgers_body_and_retry_after() -> None:
    refusal = BudgetExceeded(
        "Daily budget exceeded for team 'search'",
        rate=False,
        detail={"id": "team:search:daily", "exceeded": "usd"},
        retry_after=3600,
    )
    error = from_ledger(refusal)
    assert (error.status, error.code, error.type) == (
        429,
        "budget_exceeded",
        "budget_exceeded_error",
    )
    assert error.body() == refusal.body()
    assert error.body()["error"]["budget"] == {"id": "team:search:daily", "exceeded": "usd"}
    assert error.headers() == {"retry-after": "3600", "x-should-retry": "false"}


def test_unreachable_counters_are_answered_503_ledger_unavailable() -> None:
    error = from_ledger(CountersUnreachable("Budgets cannot be checked"))
    assert (error.status, error.code, error.message) == (
        503,
        "ledger_unavailable",
        "Budgets cannot be checked",
    )
    assert "retry-after" in error.headers()


def test_unreadable_budgets_are_answered_503_store_unavailable() -> None:
    error = from_ledger(BudgetsUnreadable("Budgets cannot be read"))
    assert (error.status, error.code) == (503, "store_unavailable")
    assert "retry-after" in error.headers()
