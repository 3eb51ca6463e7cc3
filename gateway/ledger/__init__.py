"""Token ledger and budgets: reservations before the upstream call, settlement after.

Import from the submodules (`gateway.ledger.ledger`, `.budgets`, `.reports`); this package
module stays empty so that `gateway.settings` can import `gateway.ledger.settings` freely.
"""
