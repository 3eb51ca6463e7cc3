"""The relational store (SQLite or PostgreSQL through SQLAlchemy): teams, keys, spend log."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store.records import (
    ApiKey,
    OutcomeRecord,
    SpendRecord,
    Team,
    from_picousd,
    to_picousd,
)
from gateway.store.schema import SchemaError, SchemaState, refuse_unknown, schema_state, upgrade
from gateway.store.tables import api_keys, archived_teams, router_outcomes, spend_log, teams

# Separates a deleted team's name from its archive suffix, `search~1f2e3d4c`. Team names cannot
# contain it (gateway.api.admin.TEAM_NAME), so an archived id never names a live team.
ARCHIVE_SEPARATOR = "~"

# Moves a team's rows of another table to its archived id, in the caller's transaction:
# (connection, name, archived id) -> rows moved.
TeamRelabel = Callable[[AsyncConnection, str, str], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class ArchivedTeam:
    """A deleted team: its spend rows and budgets now carry `id` instead of `name`."""

    id: str
    name: str
    created_at: datetime
    deleted_at: datetime


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The connections one engine may hold on a database server (SQLite has no pool to bound):
    `size` kept open, up to `overflow` more under load, `timeout_s` to wait for a free one,
    `connect_timeout_s` to open one."""

    size: int = 5
    overflow: int = 5
    timeout_s: float = 30.0
    # A host that drops packets would otherwise hold a request for asyncpg's 60 s default.
    connect_timeout_s: float = 5.0

    @property
    def most(self) -> int:
        return self.size + self.overflow


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
    def connect(cls, url: str, pool: PoolLimits | None = None) -> Store:
        """The store on its own engine; in a serving process, the only engine (the ledger's
        budgets and counters share it), so `pool` bounds the process's connections."""
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {}
        if make_url(url).get_backend_name() != "sqlite":
            pool = pool or PoolLimits()
            options = {
                "pool_pre_ping": True,
                "pool_size": pool.size,
                "max_overflow": pool.overflow,
                "pool_timeout": pool.timeout_s,
            }
            if make_url(async_url(url)).drivername == "postgresql+asyncpg":
                options["connect_args"] = {"timeout": pool.connect_timeout_s}
        engine = create_async_engine(async_url(url), **options)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def migrate(self) -> SchemaState:
        """Bring the schema to the newest Alembic revision (once, whoever else migrates at the
        same time); SchemaError if a newer release migrated it."""
        async with self.engine.begin() as conn:
            return await conn.run_sync(upgrade)

    async def check_schema(self) -> SchemaState:
        """For a process that does not migrate: SchemaError unless the schema is this
        release's newest (a newer one is refused; an older one waits for `rightsize migrate`)."""
        async with self.engine.connect() as conn:
            state = await conn.run_sync(schema_state)
        refuse_unknown(state)
        if not state.up_to_date:
            raise SchemaError(
                f"the database schema is at revision {state.current or 'none'}, this release "
                f"needs {state.head}: run `rightsize migrate` (or set store.migrate_on_start)"
            )
        return state

    async def aclose(self) -> None:
        await self.engine.dispose()

    # Teams

    async def create_team(
        self,
        name: str,
        *,
        relabel: Sequence[TeamRelabel] = (),
        latency_class: str | None = None,
    ) -> Team:
        """Create a team. What still carries the name (spend rows an earlier team of that name
        logged after its deletion; rows and budgets, with each `relabel`, of a team deleted
        before deletions archived) moves to that team's archive first: the new one starts clean."""
        team = Team(name=name, created_at=_now(), latency_class=latency_class)
        async with self.engine.begin() as conn:
            try:
                await conn.execute(
                    insert(teams).values(
                        name=name, created_at=team.created_at, latency_class=latency_class
                    )
                )
            except IntegrityError:
                raise Conflict(f"team {name!r} already exists") from None
            latest = await conn.scalar(
                select(archived_teams.c.id)
                .where(archived_teams.c.name == name)
                .order_by(archived_teams.c.deleted_at.desc())
                .limit(1)
            )
            archived_id = latest or _archive_id(name)
            if await _move_to_archive(conn, name, archived_id, relabel) and latest is None:
                # A team deleted before revision 0006: when it was deleted is unknown.
                first = await conn.scalar(
                    select(func.min(spend_log.c.created_at)).where(spend_log.c.team == archived_id)
                )
                await conn.execute(
                    insert(archived_teams).values(
                        id=archived_id,
                        name=name,
                        created_at=first or team.created_at,
                        deleted_at=team.created_at,
                    )
                )
        return team

    async def list_teams(self) -> list[Team]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(teams).order_by(teams.c.name))
            return [
                Team(name=r.name, created_at=_aware(r.created_at), latency_class=r.latency_class)
                for r in rows
            ]

    async def set_team_latency_class(self, name: str, latency_class: str | None) -> Team:
        """Set (None: clear) the team's default latency class."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(teams).where(teams.c.name == name).values(latency_class=latency_class)
            )
            row = (await conn.execute(select(teams).where(teams.c.name == name))).first()
        if row is None:
            raise Missing(f"team {name!r} does not exist")
        return Team(
            name=row.name, created_at=_aware(row.created_at), latency_class=row.latency_class
        )

    async def delete_team(self, name: str, *, relabel: Sequence[TeamRelabel] = ()) -> ArchivedTeam:
        """Archive a team under a new id, `name~hex`: its spend rows (and what each `relabel`
        moves, in the same transaction) take the id; its keys and its name are gone."""
        deleted_at = _now()
        archived_id = _archive_id(name)
        async with self.engine.begin() as conn:
            # Locked so that two deletions of one team archive it once (PostgreSQL; SQLite
            # serialises writers anyway).
            created_at = await conn.scalar(
                select(teams.c.created_at).where(teams.c.name == name).with_for_update()
            )
            if created_at is None:
                raise Missing(f"team {name!r} does not exist")
            archived = ArchivedTeam(archived_id, name, _aware(created_at), deleted_at)
            await conn.execute(
                insert(archived_teams).values(
                    id=archived_id, name=name, created_at=created_at, deleted_at=deleted_at
                )
            )
            await _move_to_archive(conn, name, archived_id, relabel)
            await conn.execute(delete(api_keys).where(api_keys.c.team == name))
            await conn.execute(delete(teams).where(teams.c.name == name))
        return archived

    async def archived_teams(self, name: str | None = None) -> list[ArchivedTeam]:
        """Deleted teams, newest deletion first; `name`: only those that had this name."""
        query = select(archived_teams).order_by(
            archived_teams.c.deleted_at.desc(), archived_teams.c.id
        )
        if name is not None:
            query = query.where(archived_teams.c.name == name)
        async with self.engine.connect() as conn:
            return [_archived(r._mapping) for r in await conn.execute(query)]

    async def archived_team(self, id_: str) -> ArchivedTeam | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(archived_teams).where(archived_teams.c.id == id_))
            ).first()
        return _archived(row._mapping) if row is not None else None

    # Keys

    async def create_key(
        self,
        key_id: str,
        team: str,
        key_hash: str,
        key_hint: str,
        name: str | None,
        allowed_models: Sequence[str] | None,
        latency_class: str | None = None,
    ) -> ApiKey:
        key = ApiKey(
            id=key_id,
            team=team,
            name=name,
            key_hint=key_hint,
            allowed_models=tuple(allowed_models) if allowed_models is not None else None,
            created_at=_now(),
            revoked_at=None,
            latency_class=latency_class,
        )
        async with self.engine.begin() as conn:
            exists = (await conn.execute(select(teams).where(teams.c.name == team))).first()
            if exists is None:
                raise Missing(f"team {team!r} does not exist")
            key = replace(key, team_latency_class=exists.latency_class)
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    team=team,
                    name=name,
                    key_hash=key_hash,
                    key_hint=key_hint,
                    allowed_models=list(allowed_models) if allowed_models is not None else None,
                    created_at=key.created_at,
                    latency_class=latency_class,
                )
            )
        return key

    async def list_keys(self, team: str | None = None) -> list[ApiKey]:
        query = _keys_query().order_by(api_keys.c.created_at)
        if team is not None:
            query = query.where(api_keys.c.team == team)
        async with self.engine.connect() as conn:
            return [_key(r._mapping) for r in await conn.execute(query)]

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        """The key with this hash (revoked or not) and its stored hash for a constant-time check."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_keys_query().where(api_keys.c.key_hash == key_hash))).first()
        return (_key(row._mapping), row.key_hash) if row is not None else None

    async def revoke_key(self, key_id: str) -> ApiKey:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            row = (await conn.execute(_keys_query().where(api_keys.c.id == key_id))).first()
        if row is None:
            raise Missing(f"key {key_id!r} does not exist")
        return _key(row._mapping)

    async def set_key_latency_class(self, key_id: str, latency_class: str | None) -> ApiKey:
        """Set (None: clear) the key's default latency class."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(latency_class=latency_class)
            )
            row = (await conn.execute(_keys_query().where(api_keys.c.id == key_id))).first()
        if row is None:
            raise Missing(f"key {key_id!r} does not exist")
        return _key(row._mapping)

    # Spend log

    async def insert_spend(self, records: Sequence[SpendRecord]) -> None:
        """Write the rows; a row whose record_id is already stored is skipped, not an error."""
        if not records:
            return
        async with self.engine.begin() as conn:
            await conn.execute(_insert_spend_once(conn), [_spend_row(r) for r in records])

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

    async def spend_served(
        self,
        *,
        since: datetime | None = None,
        team: str | None = None,
        deployment: str | None = None,
    ) -> list[SpendRecord]:
        """Spend-log rows with a router estimate, oldest first, optionally filtered."""
        query = (
            select(spend_log)
            .where(spend_log.c.token_budget_p50.is_not(None))
            .order_by(spend_log.c.id)
        )
        if since is not None:
            query = query.where(spend_log.c.created_at >= since)
        if team is not None:
            query = query.where(spend_log.c.team == team)
        if deployment is not None:
            query = query.where(spend_log.c.deployment == deployment)
        async with self.engine.connect() as conn:
            return [_spend_record(r._mapping) for r in await conn.execute(query)]

    async def spend_of_requests(self, request_ids: Sequence[str]) -> list[SpendRecord]:
        """Every spend-log row of these request ids, oldest first (an id may have several)."""
        rows: list[SpendRecord] = []
        ids = list(dict.fromkeys(request_ids))
        async with self.engine.connect() as conn:
            # In chunks: SQLite caps the parameters of one statement.
            for start in range(0, len(ids), 500):
                query = (
                    select(spend_log)
                    .where(spend_log.c.request_id.in_(ids[start : start + 500]))
                    .order_by(spend_log.c.id)
                )
                rows.extend(_spend_record(r._mapping) for r in await conn.execute(query))
        return rows

    # Shadow-judged outcomes (issue 21)

    async def insert_outcomes(self, records: Sequence[OutcomeRecord]) -> None:
        """Write the rows; a row whose outcome_id is already stored is skipped."""
        if not records:
            return
        async with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(router_outcomes).on_conflict_do_nothing(
                index_elements=["outcome_id"]
            )
            await conn.execute(statement, [_outcome_row(r) for r in records])

    async def outcomes(
        self,
        *,
        team: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[OutcomeRecord]:
        """The judged outcomes, oldest first, of one team or all, in [since, until)."""
        query = select(router_outcomes).order_by(router_outcomes.c.id)
        if team is not None:
            query = query.where(router_outcomes.c.team == team)
        if since is not None:
            query = query.where(router_outcomes.c.created_at >= since)
        if until is not None:
            query = query.where(router_outcomes.c.created_at < until)
        async with self.engine.connect() as conn:
            return [_outcome_record(r._mapping) for r in await conn.execute(query)]


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


def _archive_id(name: str) -> str:
    return f"{name}{ARCHIVE_SEPARATOR}{secrets.token_hex(4)}"


async def _move_to_archive(
    conn: AsyncConnection, name: str, archived_id: str, relabel: Sequence[TeamRelabel]
) -> int:
    """Give the team's spend rows (and each relabel's rows) the archived id; how many moved."""
    result = await conn.execute(
        update(spend_log).where(spend_log.c.team == name).values(team=archived_id)
    )
    moved = int(result.rowcount)
    # Its judged outcomes go with it: a team made again under the name starts without them.
    await conn.execute(
        update(router_outcomes).where(router_outcomes.c.team == name).values(team=archived_id)
    )
    for move in relabel:
        moved += await move(conn, name, archived_id)
    return moved


def _archived(row: Any) -> ArchivedTeam:
    return ArchivedTeam(
        id=row["id"],
        name=row["name"],
        created_at=_aware(row["created_at"]),
        deleted_at=_aware(row["deleted_at"]),
    )


def _keys_query() -> Any:
    """Keys with their team's default latency class (a key outlives no team: cascade)."""
    return select(api_keys, teams.c.latency_class.label("team_latency_class")).join(
        teams, teams.c.name == api_keys.c.team
    )


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
        latency_class=row["latency_class"],
        team_latency_class=row["team_latency_class"],
    )


def _insert_spend_once(conn: AsyncConnection) -> Any:
    # A replayed journal or fallback file may hold rows already written: ON CONFLICT makes the
    # replay idempotent without a read first (both dialects take the unique record_id index).
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(spend_log).on_conflict_do_nothing(index_elements=["record_id"])


def _spend_row(record: SpendRecord) -> dict[str, Any]:
    return {
        "record_id": record.record_id,
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
        "reasoning_demand": record.reasoning_demand,
        "token_budget_p50": record.token_budget_p50,
        "token_budget_p90": record.token_budget_p90,
        "category": record.category,
        "router_artifact": record.router_artifact,
        "config_hash": record.config_hash,
        "api": record.api,
        "cache_creation_tokens": record.cache_creation_tokens,
        "latency_class": record.latency_class,
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
        # Rows written before revision 0006 have none; their row id stands in for it.
        record_id=row["record_id"] or f"row{row['id']}",
        reasoning_demand=row["reasoning_demand"],
        token_budget_p50=row["token_budget_p50"],
        token_budget_p90=row["token_budget_p90"],
        category=row["category"],
        router_artifact=row["router_artifact"],
        config_hash=row["config_hash"],
        # Rows written before revision 0008 do not say; only the OpenAI API existed for most.
        api=row["api"] or "openai",
        cache_creation_tokens=row["cache_creation_tokens"],
        latency_class=row["latency_class"],
    )


_OUTCOME_MONEY = {"shadow_cost_usd": "shadow_cost_picousd", "judge_cost_usd": "judge_cost_picousd"}


def _outcome_row(record: OutcomeRecord) -> dict[str, Any]:
    row = {
        name: getattr(record, name)
        for name in OutcomeRecord.__dataclass_fields__
        if name not in _OUTCOME_MONEY
    }
    for name, column in _OUTCOME_MONEY.items():
        row[column] = to_picousd(getattr(record, name))
    return row


def _outcome_record(row: Any) -> OutcomeRecord:
    fields = {
        name: row[name] for name in OutcomeRecord.__dataclass_fields__ if name not in _OUTCOME_MONEY
    }
    fields["created_at"] = _aware(row["created_at"])
    for name, column in _OUTCOME_MONEY.items():
        fields[name] = from_picousd(row[column])
    return OutcomeRecord(**fields)
