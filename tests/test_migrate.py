"""Migrations for a deployment: `rightsize migrate` (the Job), once however many run at once,
and replicas that refuse a schema they do not know."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from gateway.store import Store
from gateway.store.schema import _MIGRATIONS
from tests.conftest import gateway_env
from tests.replicas_support import fresh_database

# This release's newest revision, read from the migrations (not a number to bump by hand).
HEAD = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
OLDER = ScriptDirectory(str(_MIGRATIONS)).get_revision(HEAD).down_revision


def _rightsize(*args: str, store_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = gateway_env(RIGHTSIZE_STORE__URL=store_url, **env)
    command = [sys.executable, "-m", "gateway.cli", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)


def _sqlite_at(tmp_path: Path, revision: str | None) -> str:
    """A SQLite store migrated to the head, its recorded revision then set to `revision`."""
    path = tmp_path / "rightsize.db"
    url = f"sqlite:///{path}"
    assert _rightsize("migrate", store_url=url).returncode == 0
    if revision is not None:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return url


def test_migrate_brings_a_new_store_to_the_head_then_finds_it_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rightsize.db'}"
    check = _rightsize("migrate", "--check", store_url=url)
    assert check.returncode == 1 and "run `rightsize migrate`" in check.stderr

    first = _rightsize("migrate", store_url=url)
    again = _rightsize("migrate", store_url=url)

    assert first.returncode == 0 and f"from revision none to {HEAD}" in first.stdout
    assert again.returncode == 0 and f"revision {HEAD}: up to date" in again.stdout
    assert _rightsize("migrate", "--check", store_url=url).returncode == 0


def test_migrations_started_at_once_on_postgresql_run_once() -> None:
    async def migrate_at_once(url: str) -> set[str | None]:
        stores = [Store.connect(url) for _ in range(4)]
        try:
            # Without the advisory lock the second CREATE TABLE fails on PostgreSQL's catalog.
            # (or they wait on each other's locks: the deadline turns that into a failure).
            states = await asyncio.wait_for(asyncio.gather(*(s.migrate() for s in stores)), 60)
        finally:
            for s in stores:
                await s.aclose()
        return {state.current for state in states}

    with fresh_database() as url:
        assert asyncio.run(migrate_at_once(url)) == {HEAD}


@pytest.mark.parametrize("migrate_on_start", ["true", "false"])
def test_serve_refuses_a_schema_newer_than_it_knows(tmp_path: Path, migrate_on_start: str) -> None:
    url = _sqlite_at(tmp_path, "9999")

    served = _rightsize(
        "serve", "--port", "0", store_url=url, RIGHTSIZE_STORE__MIGRATE_ON_START=migrate_on_start
    )

    assert served.returncode != 0
    assert "revision 9999, newer than this release knows" in served.stderr
    assert _rightsize("migrate", store_url=url).returncode == 1  # the Job refuses it too


def test_a_replica_that_does_not_migrate_refuses_an_older_schema(tmp_path: Path) -> None:
    url = _sqlite_at(tmp_path, OLDER)

    served = _rightsize(
        "serve", "--port", "0", store_url=url, RIGHTSIZE_STORE__MIGRATE_ON_START="false"
    )

    assert served.returncode != 0
    assert f"revision {OLDER}, this release needs {HEAD}: run `rightsize migrate`" in served.stderr
