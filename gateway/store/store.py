"""The relational store (SQLite or PostgreSQL through SQLAlchemy): teams, keys, spend log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.store.records import ApiKey, SpendRecord, Team, from_picousd, to_picousd
from gateway.store.tables import api_keys, spend_log, teams

_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class Conflict(ValueError):
    """The row already exists."""


class Missing(LookupError):
    """The row does not exist."""


def async_url(url: str) -> str:
    """Pick the async driver for a plain SQLAlchemy URL."""
    parsed = make_url(url)
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    if parsed.drivername in drivers:
        parsed = parsed.set(drivername=drivers[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


class Store:
    """Teams, keys and the spend log behind one async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: str) -> Store:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(async_url(url), pool_pre_ping=path is None)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def aclose(self) -> None:
        await self.engine.dispose()

    # Teams

    async def create_team(self, name: str) -> Team:
        team = Team(name=name, created_at=_now())
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(teams).values(name=name, created_at=team.created_at))
        except IntegrityError:
            raise Conflict(f"team {name!r} already exists") from None
        return team

    async def list_teams(self) -> list[Team]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(teams).order_by(teams.c.name))
            return [Team(name=r.name, created_at=_aware(r.created_at)) for r in rows]

    async def delete_team(self, name: str) -> None:
        """Delete a team and its keys; its spend-log rows stay."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(api_keys).where(api_keys.c.team == name))
            result = await conn.execute(delete(teams).where(teams.c.name == name))
        if result.rowcount == 0:
            raise Missing(f"team {name!r} does not exist")

    # Keys

    async def create_key(
        self,
        key_id: str,
        team: str,
        key_hash: str,
        key_hint: str,
        name: str | None,
        allowed_models: Sequence[str] | None,
    ) -> ApiKey:
        key = ApiKey(
            id=key_id,
            team=team,
            name=name,
            key_hint=key_hint,
            allowed_models=tuple(allowed_models) if allowed_models is not None else None,
            created_at=_now(),
            revoked_at=None,
        )
        async with self.engine.begin() as conn:
            exists = await conn.scalar(select(teams.c.name).where(teams.c.name == team))
            if exists is None:
                raise Missing(f"team {team!r} does not exist")
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    team=team,
                    name=name,
                    key_hash=key_hash,
                    key_hint=key_hint,
                    allowed_models=list(allowed_models) if allowed_models is not None else None,
                    created_at=key.created_at,
                )
            )
        return key

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if team is not None:
            query = query.where(api_keys.c.team == team)
        async with self.engine.connect() as conn:
            return [_key(r._mapping) for r in await conn.execute(query)]

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        """The key with this hash (revoked or not) and its stored hash for a constant-time check."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash))
            ).first()
        return (_key(row._mapping), row.key_hash) if row is not None else None

    async def revoke_key(self, key_id: str) -> ApiKey:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise Missing(f"key {key_id!r} does not exist")
        return _key(row._mapping)

    # Spend log

    async def insert_spend(self, records: Sequence[SpendRecord]) -> None:
        if not records:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(spend_log), [_spend_row(r) for r in records])

    async def spend(
        self, *, request_id: str | None = None, team: str | None = None, limit: int = 100
    ) -> list[SpendRecord]:
        """Newest spend-log rows first, optionally for one request or team."""
        query = select(spend_log).order_by(spend_log.c.id.desc()).limit(limit)
        if request_id is not None:
            query = query.where(spend_log.c.request_id == request_id)
        if team is not None:
            query = query.where(spend_log.c.team == team)
        async with self.engine.connect() as conn:
            return [_spend_record(r._mapping) for r in await conn.execute(query)]


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _key(row: Any) -> ApiKey:
    allowed = row["allowed_models"]
    return ApiKey(
        id=row["id"],
        team=row["team"],
        name=row["name"],
        key_hint=row["key_hint"],
        allowed_models=tuple(allowed) if allowed is not None else None,
        created_at=_aware(row["created_at"]),
        revoked_at=_aware(row["revoked_at"]) if row["revoked_at"] else None,
    )


def _spend_row(record: SpendRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "created_at": record.created_at,
        "team": record.team,
        "key_id": record.key_id,
        "requested_model": record.requested_model,
        "deployment": record.deployment,
        "tier": record.tier,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "usage_estimated": record.usage_estimated,
        "cost_picousd": to_picousd(record.cost_usd),
        "upstream_ms": record.upstream_ms,
        "overhead_ms": record.overhead_ms,
        "stream": record.stream,
        "cache_hit": record.cache_hit,
        "saved_picousd": to_picousd(record.saved_usd),
        "status": record.status,
        "error_type": record.error_type,
        "route_reason": record.route_reason,
        "attempts": record.attempts,
    }


def _spend_record(row: Any) -> SpendRecord:
    return SpendRecord(
        request_id=row["request_id"],
        created_at=_aware(row["created_at"]),
        status=row["status"],
        team=row["team"],
        key_id=row["key_id"],
        requested_model=row["requested_model"],
        deployment=row["deployment"],
        tier=row["tier"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cached_tokens=row["cached_tokens"],
        usage_estimated=row["usage_estimated"],
        cost_usd=from_picousd(row["cost_picousd"]),
        upstream_ms=row["upstream_ms"],
        overhead_ms=row["overhead_ms"],
        stream=row["stream"],
        cache_hit=row["cache_hit"],
        saved_usd=from_picousd(row["saved_picousd"]),
        error_type=row["error_type"],
        route_reason=row["route_reason"],
        attempts=row["attempts"],
    )
