"""Token ledger and budgets: reservations before the upstream call, settlement after.

A domain package like `policies`: it knows budgets, periods, counters and the spend log they
are rebuilt from, and imports nothing of the gateway. The gateway adapts it: HTTP routes
(gateway/api/budgets.py), CLI commands (gateway/cli/budgets.py), `open_ledger(settings, store)`
(gateway/ledger_build.py), the metering of a chat request (gateway/pipeline/metering.py) and
the mapping of its errors to HTTP answers (gateway/errors.py).

Import from the submodules (`ledger.ledger`, `.budgets`, `.reports`); this module stays empty
so that importing one of them loads only what it needs.
"""
