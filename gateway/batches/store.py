"""The batch API's rows: files, batches, their provider jobs and lines (revision 0011)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from gateway.store import Store
from gateway.store.tables import batch_jobs, batch_lines, batches, files

# OpenAI's batch lifecycle: a batch in one of these still has work to do.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    team: str
    key_id: str
    purpose: str
    filename: str
    bytes: int
    created_at: datetime

    def json(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": _epoch(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    team: str
    key_id: str
    endpoint: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    status: str
    completion_window: str
    total: int
    completed: int
    failed: int
    metadata: dict[str, Any] | None
    errors: list[dict[str, Any]] | None
    created_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    expires_at: datetime
    expired_at: datetime | None

    def json(self) -> dict[str, Any]:
        """OpenAI's batch object."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": _epoch(self.created_at),
            "in_progress_at": _epoch(self.in_progress_at),
            "expires_at": _epoch(self.expires_at),
            "finalizing_at": _epoch(self.finalizing_at),
            "completed_at": _epoch(self.completed_at),
            "failed_at": _epoch(self.failed_at),
            "expired_at": _epoch(self.expired_at),
            "cancelling_at": _epoch(self.cancelling_at),
            "cancelled_at": _epoch(self.cancelled_at),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    batch_id: str
    deployment: str
    upstream_file_id: str | None
    upstream_batch_id: str | None
    status: str
    attempts: int  # failed submissions so far
    retry_at: datetime | None  # the next submission not before this


@dataclass(frozen=True, slots=True)
class LineRecord:
    batch_id: str
    line: int
    custom_id: str | None
    job_id: str | None
    requested_model: str | None
    deployment: str | None
    tier: str | None
    route_reason: str | None
    hold_id: str | None
    held_picousd: int | None
    held_tokens: int | None
    held_at: datetime | None
    status: str  # pending (routed, not yet answered), done, failed, cancelled or expired
    result: dict[str, Any] | None


class BatchStore:
    """The batch tables on the store's engine."""

    def __init__(self, store: Store) -> None:
        self.engine = store.engine

    # Files

    async def add_file(
        self, team: str, key_id: str, purpose: str, filename: str, content: bytes
    ) -> FileRecord:
        record = FileRecord(new_id("file"), team, key_id, purpose, filename, len(content), _now())
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(**_fields(record), content=content))
        return record

    async def file(self, team: str, file_id: str) -> FileRecord | None:
        """The team's file; another team's is not found."""
        columns = [c for c in files.c if c.name != "content"]
        query = select(*columns).where(files.c.id == file_id, files.c.team == team)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return FileRecord(**row._mapping) if row is not None else None

    async def content(self, team: str, file_id: str) -> bytes | None:
        query = select(files.c.content).where(files.c.id == file_id, files.c.team == team)
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return bytes(value) if value is not None else None

    async def files(self, team: str, purpose: str | None, limit: int) -> list[FileRecord]:
        columns = [c for c in files.c if c.name != "content"]
        query = select(*columns).where(files.c.team == team)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        query = query.order_by(files.c.created_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [FileRecord(**r._mapping) for r in await conn.execute(query)]

    async def delete_file(self, team: str, file_id: str) -> bool:
        async with self.engine.begin() as conn:
            found = await conn.execute(
                delete(files).where(files.c.id == file_id, files.c.team == team)
            )
        return bool(found.rowcount)

    # Batches

    async def add_batch(
        self,
        team: str,
        key_id: str,
        endpoint: str,
        input_file_id: str,
        window: timedelta,
        metadata: dict[str, Any] | None,
        prefix: str = "batch",
        total: int = 0,
    ) -> BatchRecord:
        now = _now()
        batch_id = new_id(prefix)
        values = {
            "id": batch_id,
            "team": team,
            "key_id": key_id,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "status": "validating",
            "completion_window": "24h",
            "metadata": metadata,
            "total": total,
            "created_at": now,
            "expires_at": now + window,
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches).values(**values))
        found = await self.batch(team, batch_id)
        assert found is not None
        return found

    async def batch(self, team: str | None, batch_id: str) -> BatchRecord | None:
        """The batch (the team's only, when a team is given)."""
        query = select(*_batch_columns()).where(batches.c.id == batch_id)
        if team is not None:
            query = query.where(batches.c.team == team)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return BatchRecord(**row._mapping) if row is not None else None

    async def batches(
        self, team: str, limit: int, after: str | None, endpoint: str | None = None
    ) -> list[BatchRecord]:
        """The team's batches, newest first (of one endpoint's API, when given)."""
        query = select(*_batch_columns()).where(batches.c.team == team)
        if endpoint is not None:
            query = query.where(batches.c.endpoint == endpoint)
        if after is not None:
            anchor = await self.batch(team, after)
            if anchor is not None:
                query = query.where(batches.c.created_at <= anchor.created_at)
                query = query.where(batches.c.id != after)
        query = query.order_by(batches.c.created_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [BatchRecord(**r._mapping) for r in await conn.execute(query)]

    async def update_batch(self, batch_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))

    async def update_batch_from(self, batch_id: str, was: str, **values: Any) -> bool:
        """update_batch, only while the batch's status is still `was`: one conditional UPDATE, so a
        cancel that came in between is kept, not overwritten. Whether it was updated."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status == was)
                .values(**values)
            )
        return bool(done.rowcount == 1)

    async def request_cancel(self, team: str, batch_id: str) -> BatchRecord | None:
        """Mark an unfinished batch `cancelling` (its driver cancels it); None: not the team's."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.team == team,
                    batches.c.status.in_(("validating", "in_progress")),
                )
                .values(status="cancelling", cancelling_at=_now())
            )
        return await self.batch(team, batch_id)

    async def active(self, limit: int) -> list[str]:
        """Ids of batches with work left, oldest first."""
        query = (
            select(batches.c.id)
            .where(batches.c.status.in_(ACTIVE))
            .order_by(batches.c.created_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in await conn.execute(query)]

    async def lease(self, batch_id: str, owner: str, lease_s: float) -> bool:
        """Take or renew the batch's lease: one atomic conditional UPDATE, on either database."""
        now = _now()
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.status.in_(ACTIVE),
                    or_(
                        batches.c.lease_owner.is_(None),
                        batches.c.lease_owner == owner,
                        batches.c.lease_until < now,
                    ),
                )
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
            )
        return bool(taken.rowcount)

    # Lines and jobs

    async def add_lines(self, lines: Sequence[dict[str, Any]]) -> None:
        if lines:
            async with self.engine.begin() as conn:
                await conn.execute(insert(batch_lines), list(lines))

    async def lines(self, batch_id: str, job_id: str | None = None) -> list[LineRecord]:
        query = select(batch_lines).where(batch_lines.c.batch_id == batch_id)
        if job_id is not None:
            query = query.where(batch_lines.c.job_id == job_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(batch_lines.c.line))
            return [LineRecord(**r._mapping) for r in rows]

    async def line_counts(self, batch_id: str) -> dict[str, int]:
        """How many of the batch's lines are in each status (pending, done, failed, cancelled)."""
        query = (
            select(batch_lines.c.status, func.count())
            .where(batch_lines.c.batch_id == batch_id)
            .group_by(batch_lines.c.status)
        )
        async with self.engine.connect() as conn:
            return {str(r[0]): int(r[1]) for r in await conn.execute(query)}

    async def finish_line(self, batch_id: str, line: int, status: str, result: Any) -> bool:
        """Record a pending line's outcome, once: False when another process already did."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(batch_lines)
                .where(
                    and_(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.line == line,
                        batch_lines.c.status == "pending",
                    )
                )
                .values(status=status, result=result)
            )
        return bool(done.rowcount)

    async def add_job(self, batch_id: str, deployment: str) -> str:
        job_id = new_id("job")
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(batch_jobs).values(
                    id=job_id, batch_id=batch_id, deployment=deployment, status="submitting"
                )
            )
        return job_id

    async def jobs(self, batch_id: str) -> list[JobRecord]:
        query = select(batch_jobs).where(batch_jobs.c.batch_id == batch_id)
        async with self.engine.connect() as conn:
            return [JobRecord(**r._mapping) for r in await conn.execute(query)]

    async def update_job(self, job_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_id).values(**values))


def _batch_columns() -> list[Any]:
    return [c for c in batches.c if c.name not in ("lease_owner", "lease_until")]


def _fields(record: FileRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FileRecord.__slots__}


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return int(aware.timestamp())


def _now() -> datetime:
    return datetime.now(UTC)
