"""The store's schema version: migrate it under a lock, refuse a schema this code does not know.

Several replicas, or a migration Job beside them, may start at once: on PostgreSQL the upgrade
runs under a transaction-scoped advisory lock, so one migrates and the others find it done.
A replica of an older release started against a newer schema (a rollback, a rollout's old pod
restarting) would write rows the new schema does not expect: it refuses to start instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# Any constant shared by every release: pg_advisory_xact_lock takes one 64-bit key.
MIGRATION_LOCK_KEY = 0x52_49_47_48_54_53_5A_45  # "RIGHTSZE"


class SchemaError(RuntimeError):
    """The database's schema is not one this release can serve."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where the database stands against this release's migrations."""

    current: str | None  # None: no schema yet
    head: str
    known: bool  # the current revision is one of this release's

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def schema_state(connection: Connection) -> SchemaState:
    """The revision the database is at, this release's newest, and whether it knows the first."""
    script = ScriptDirectory.from_config(_config(connection))
    current = MigrationContext.configure(connection).get_current_revision()
    known = current is None or _has_revision(script, current)
    head = script.get_current_head()
    assert head is not None, "the migrations directory has no head"
    return SchemaState(current=current, head=head, known=known)


def upgrade(connection: Connection) -> SchemaState:
    """Bring the schema to this release's newest revision, once however many processes try;
    raises SchemaError on a schema newer than this release."""
    if connection.dialect.name == "postgresql":
        # Held until the transaction ends: a second migrator waits, then finds nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    state = schema_state(connection)
    refuse_unknown(state)
    if not state.up_to_date:
        command.upgrade(_config(connection), "head")
    return schema_state(connection)


def refuse_unknown(state: SchemaState) -> None:
    """Raise SchemaError when the database was migrated by a newer release."""
    if not state.known:
        raise SchemaError(
            f"the database schema is at revision {state.current}, newer than this release knows "
            f"(its newest is {state.head}): run a release at least as new as the one that "
            "migrated it"
        )


def _has_revision(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (CommandError, ResolutionError):  # an id none of this release's migrations has
        return False
