"""Alembic steps to a given revision, for the tests of one migration on both stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def migrate_to(revision: str, down: bool = False) -> Callable[[Any], None]:
    """A function for `AsyncConnection.run_sync` taking the schema up (or down) to `revision`."""

    def step(connection: Any) -> None:
        from alembic import command
        from alembic.config import Config

        from gateway.store.schema import _MIGRATIONS

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    return step


async def down_and_up(
    store_url: str, previous: str, read: Callable[[Any], set[str]]
) -> tuple[set[str], set[str], set[str]]:
    """What `read` finds at head, after going back to `previous`, and at head again."""
    from gateway.store import Store

    store = Store.connect(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(migrate_to("head"))
            at_head = await conn.run_sync(read)
            await conn.run_sync(migrate_to(previous, down=True))
            at_previous = await conn.run_sync(read)
            await conn.run_sync(migrate_to("head"))
            return at_head, at_previous, await conn.run_sync(read)
    finally:
        await store.aclose()


def tables(connection: Any) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(connection).get_table_names())


def spend_columns(connection: Any) -> set[str]:
    from sqlalchemy import inspect

    return {c["name"] for c in inspect(connection).get_columns("spend_log")}
