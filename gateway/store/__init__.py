"""Persistent state: teams, keys and the spend log on SQLite or PostgreSQL."""

from gateway.store.records import ApiKey, OutcomeRecord, SpendRecord, Team, from_picousd, to_picousd
from gateway.store.schema import SchemaError, SchemaState
from gateway.store.store import Conflict, Missing, Store, sqlite_path

__all__ = [
    "ApiKey",
    "Conflict",
    "Missing",
    "OutcomeRecord",
    "SchemaError",
    "SchemaState",
    "SpendRecord",
    "Store",
    "Team",
    "from_picousd",
    "sqlite_path",
    "to_picousd",
]
