"""The batch driver: routes each line, submits provider batch jobs, polls them, settles.

One loop per gateway process, every `batches.poll_interval_s` (and at once when a batch is
created or cancelled). Its state is in the database: a batch is advanced by whichever process
holds its lease (gateway/batches/store.py), so another replica or a restarted process carries
on where one stopped. A line's outcome is recorded once (a conditional UPDATE), and only then
charged: its spend row at the batch price, its hold settled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from gateway.batches.store import BatchRecord, BatchStore, JobRecord, LineRecord
from gateway.batches.upstream import ProviderBatchError, ProviderBatches, takes_batches
from gateway.errors import GatewayError, from_ledger
from gateway.pipeline.attempts import attempt_payload
from gateway.pipeline.metering import reserve_request, settle_request
from gateway.pipeline.steps import decide, estimate, team_context
from gateway.schemas import ChatRequest
from gateway.settings import BatchSettings, ServerSettings
from gateway.state import Gateway
from gateway.store import ApiKey, SpendRecord
from gateway.tokens import count_prompt_tokens
from gateway.usage import usage_from
from ledger.budgets import Amounts
from ledger.errors import LedgerError
from policies import Deployment, Usage

log = logging.getLogger("rightsize.batches")

WINDOW = timedelta(hours=24)  # the one completion window OpenAI offers
ENDPOINT = "/v1/chat/completions"
# Anthropic's Message Batches (gateway/api/message_batches.py): each line's body is a Messages
# request, translated into the chat request the lines of ENDPOINT are (the same translation
# /v1/messages uses); the batch's results are translated back when they are read.
MESSAGES_ENDPOINT = "/v1/messages"
# Lines routed at once: the router's batcher estimates them together.
_ROUTE_CHUNK = 64
_DIRECT_CONCURRENCY = 4  # lines of one batch in flight at once on a deployment without a batch API


# The chat endpoint's own body validation (gateway/api/chat.py), handed in: a line is read
# exactly as a request to /v1/chat/completions is.
ParseChat = Callable[[Any, ServerSettings], ChatRequest]


class BatchWorker:
    """Advances the batches whose lease this process holds."""

    def __init__(
        self,
        gateway: Gateway | Callable[[], Gateway],
        upstream: ProviderBatches,
        settings: BatchSettings,
        parse: ParseChat,
        parsers: Mapping[str, ParseChat] | None = None,
    ) -> None:
        # The snapshot in force (app.state.gateway, which a reload swaps), or a fixed one.
        self._current = gateway if callable(gateway) else (lambda: gateway)
        self.parse = parse
        # A line is read by its batch's endpoint's parser: ENDPOINT's is `parse`.
        self.parsers: dict[str, ParseChat] = {ENDPOINT: parse, **(parsers or {})}
        self.upstream = upstream
        self.settings = settings
        self.store = BatchStore(self.gateway.store)
        self.owner = secrets.token_hex(8)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def gateway(self) -> Gateway:
        """The configuration in force: lines routed after a reload follow the new policy."""
        return self._current()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batch-worker")

    def wake(self) -> None:
        """Advance now (a batch was created or cancelled), not at the next poll."""
        self._wake.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.upstream.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch worker: a poll failed; retried at the next one")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> None:
        """One pass over the batches with work left (at most `batches_per_poll`)."""
        for batch_id in await self.store.active(self.settings.batches_per_poll):
            if not await self.store.lease(batch_id, self.owner, self.settings.lease_s):
                continue  # another process drives it
            batch = await self.store.batch(None, batch_id)
            if batch is None:
                continue
            try:
                await self.advance(batch)
            except Exception:
                log.exception("batch %s: could not advance; retried at the next poll", batch_id)

    async def advance(self, batch: BatchRecord) -> None:
        if batch.status in ("validating", "in_progress") and _now() >= _aware(batch.expires_at):
            await self._stop(batch, "expired")
        elif batch.status == "validating":
            await self._start(batch)
        elif batch.status == "in_progress":
            await self._poll(batch)
        elif batch.status == "cancelling":
            await self._stop(batch, "cancelled")
        elif batch.status == "finalizing":
            await self._finalize(batch, "completed")

    # validating -> in_progress

    async def _start(self, batch: BatchRecord) -> None:
        """Route and hold every line (once), then submit each deployment's job."""
        lines = await self.store.lines(batch.id)
        if not lines:
            failure = await self._route(batch)
            if failure is not None:
                await self.store.update_batch(
                    batch.id, status="failed", failed_at=_now(), errors=[failure], lease_owner=None
                )
                return
            lines = await self.store.lines(batch.id)
        waiting = 0
        for job in await self.store.jobs(batch.id):
            if job.status != "submitting":
                continue
            if job.retry_at is not None and _now() < _aware(job.retry_at):
                waiting += 1  # backing off after a failed submission
                continue
            deployment = self._deployment(job.deployment)
            if not takes_batches(deployment):
                await self.store.update_job(job.id, status="direct")
                continue
            requests = [
                {
                    "custom_id": str(line.line),
                    "method": "POST",
                    "url": ENDPOINT,
                    "body": (line.result or {}).get("request"),
                }
                for line in lines
                if line.job_id == job.id
            ]
            try:
                file_id, upstream_id = await self.upstream.submit(deployment, requests)
            except ProviderBatchError as exc:
                if not exc.no_batch_api:
                    waiting += not await self._submit_failed(batch, job, deployment, exc)
                    continue
                log.info(
                    "batch %s: %s has no batch API; its lines run one by one",
                    batch.id,
                    job.deployment,
                )
                await self.store.update_job(job.id, status="direct")
                continue
            await self.store.update_job(
                job.id, upstream_file_id=file_id, upstream_batch_id=upstream_id, status="submitted"
            )
        if waiting:
            return  # `validating` until every job is submitted (or has failed for good)
        # From `validating` only: a cancel that came meanwhile is kept (the next poll stops the
        # batch). A read, then a write, lost a cancel that landed between them.
        if await self.store.update_batch_from(
            batch.id, "validating", status="in_progress", in_progress_at=_now()
        ):
            self.wake()

    async def _submit_failed(
        self, batch: BatchRecord, job: JobRecord, deployment: Deployment, exc: Exception
    ) -> bool:
        """Count a failed submission: retried after a doubling backoff, until
        `submit_attempts`; then the job's lines fail (released, not charged). True: given up."""
        attempts = job.attempts + 1
        if attempts < self.settings.submit_attempts:
            wait = self.settings.submit_backoff_s * 2 ** (attempts - 1)
            log.warning(
                "batch %s: submitting %s failed (try %d of %d), retried in %.0f s: %s",
                batch.id,
                job.deployment,
                attempts,
                self.settings.submit_attempts,
                wait,
                exc,
            )
            retry_at = _now() + timedelta(seconds=wait)
            await self.store.update_job(job.id, attempts=attempts, retry_at=retry_at)
            return False
        log.error(
            "batch %s: submitting %s failed %d times: %s", batch.id, job.deployment, attempts, exc
        )
        await self.store.update_job(job.id, attempts=attempts, retry_at=None, status="done")
        message = f"The provider batch job could not be submitted after {attempts} tries: {exc}"
        error = _error(502, "batch_submit_failed", message)
        for line in await self.store.lines(batch.id, job.id):
            if line.status == "pending":
                await self._settle(batch, line, deployment, None, error)
        return True

    async def _route(self, batch: BatchRecord) -> dict[str, Any] | None:
        """Each line routed and held, grouped into one job per deployment; an error object
        when the file as a whole is refused."""
        content = await self.store.content(batch.team, batch.input_file_id)
        if content is None:
            return {"code": "invalid_file", "message": "The input file no longer exists"}
        key = await self._key(batch)
        if key is None:
            return {"code": "invalid_key", "message": "The batch's API key no longer exists"}
        raw_lines = [line for line in content.splitlines() if line.strip()]
        if not raw_lines:
            return {"code": "empty_file", "message": "The input file has no requests"}
        if len(raw_lines) > self.settings.max_lines:
            return {
                "code": "too_many_requests",
                "message": f"A batch holds at most {self.settings.max_lines} requests",
            }
        ttl_s = max((batch.expires_at.replace(tzinfo=UTC) - _now()).total_seconds(), 1)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(raw_lines), _ROUTE_CHUNK):
            # Renewed as it goes: a long file must not outlast the lease, or a second process
            # would route (and hold) the same lines again.
            if not await self.store.lease(batch.id, self.owner, self.settings.lease_s):
                raise RuntimeError(f"batch {batch.id}: lease lost while routing its lines")
            chunk = raw_lines[start : start + _ROUTE_CHUNK]
            rows += await asyncio.gather(
                *(
                    self._route_line(batch, key, start + i, raw, ttl_s)
                    for i, raw in enumerate(chunk)
                )
            )
        jobs: dict[str, str] = {}
        for row in rows:
            if row["status"] == "pending":
                if row["deployment"] not in jobs:
                    jobs[row["deployment"]] = await self.store.add_job(batch.id, row["deployment"])
                row["job_id"] = jobs[row["deployment"]]
        await self.store.add_lines(rows)
        failed = sum(1 for row in rows if row["status"] == "failed")
        await self.store.update_batch(batch.id, total=len(rows), failed=failed)
        return None

    async def _route_line(
        self, batch: BatchRecord, key: ApiKey, index: int, raw: bytes, ttl_s: float
    ) -> dict[str, Any]:
        """One line as an interactive request is routed: the same decision, its hold at the
        deployment's batch price, kept for `ttl_s`."""
        row: dict[str, Any] = {
            "batch_id": batch.id,
            "line": index,
            "custom_id": None,
            "job_id": None,
            "requested_model": None,
            "deployment": None,
            "tier": None,
            "route_reason": None,
            "hold_id": None,
            "held_picousd": None,
            "held_tokens": None,
            "held_at": None,
            "status": "failed",
            "result": None,
        }
        try:
            item = orjson.loads(raw)
            if not isinstance(item, dict):
                raise _LineError("invalid_request", "Each line must be a JSON object")
            custom_id = item.get("custom_id")
            row["custom_id"] = custom_id if isinstance(custom_id, str) else None
            if not isinstance(custom_id, str) or not custom_id:
                raise _LineError("missing_custom_id", "Each line needs a custom_id string")
            if item.get("method", "POST") != "POST" or item.get("url") != batch.endpoint:
                raise _LineError(
                    "invalid_url", f"Each line must be a POST to {batch.endpoint} (the batch's)"
                )
            parse = self.parsers.get(batch.endpoint)
            if parse is None:
                raise _LineError("invalid_url", f"No batch API for {batch.endpoint}")
            chat = parse(item.get("body"), self.gateway.settings.server)
            if chat.stream:
                raise _LineError("invalid_request", "A batch line cannot stream")
            payload = chat.upstream_payload()
            payload.pop("stream", None)
            payload.pop("stream_options", None)
            messages = payload["messages"]
            n_prompt = await count_prompt_tokens(messages)
            found = await estimate(self.gateway, messages)
            team = await team_context(self.gateway, key)
            local = self.gateway.local
            states = local.states() if local is not None else None
            decision = decide(
                self.gateway.policy, key, chat, messages, n_prompt, found, team, None, states
            )
            deployment = decision.deployment
            row["requested_model"], row["deployment"] = chat.model, deployment.name
            row["tier"], row["route_reason"] = decision.tier, decision.reason
            p90 = found.token_budget_p90 if found is not None else None
            hold = await reserve_request(
                self.gateway.ledger,
                key.team,
                key.id,
                chat,
                deployment,
                n_prompt,
                p90,
                batch_ttl_s=ttl_s,
            )
            if hold is not None:
                row["hold_id"], row["held_at"] = hold.id, _now()
                row["held_picousd"], row["held_tokens"] = hold.amounts.picousd, hold.amounts.tokens
            body = attempt_payload(payload, decision, deployment)
            row["status"] = "pending"
            row["result"] = {"request": {**body, "model": deployment.upstream_model}}
        except orjson.JSONDecodeError:
            row["result"] = _error(400, "invalid_json", f"Line {index + 1} is not valid JSON")
        except _LineError as exc:
            row["result"] = _error(400, exc.code, exc.message)
        except GatewayError as exc:
            row["result"] = _error(exc.status, exc.code or exc.type, str(exc))
        except LedgerError as exc:
            refusal = from_ledger(exc)
            row["result"] = _error(refusal.status, refusal.code or refusal.type, str(refusal))
        return row

    # in_progress -> finalizing

    async def _poll(self, batch: BatchRecord) -> None:
        open_jobs = 0
        for job in await self.store.jobs(batch.id):
            if job.status == "direct":
                await self._run_direct(batch, job.id, job.deployment)
                await self.store.update_job(job.id, status="done")
            elif job.status == "submitted" and job.upstream_batch_id is not None:
                deployment = self._deployment(job.deployment)
                state = await self.upstream.retrieve(deployment, job.upstream_batch_id)
                status = state.get("status")
                if status in ("completed", "failed", "expired", "cancelled"):
                    await self._collect(batch, job.id, deployment, state)
                    await self.store.update_job(job.id, status="done")
                else:
                    open_jobs += 1
            elif job.status == "submitting":
                open_jobs += 1  # a crash between routing and submission: _start resubmits
        # From in_progress only: a cancel that came while the last jobs were collected is kept
        # (the next round stops the batch as cancelled), not written over.
        if open_jobs == 0 and await self.store.update_batch_from(
            batch.id, "in_progress", status="finalizing", finalizing_at=_now()
        ):
            await self._finalize(batch, "completed")

    async def _collect(
        self, batch: BatchRecord, job_id: str, deployment: Deployment, state: dict[str, Any]
    ) -> None:
        """Read a finished provider job's output and error files; settle each of its lines."""
        answers: dict[str, dict[str, Any]] = {}
        for field in ("output_file_id", "error_file_id"):
            file_id = state.get(field)
            if isinstance(file_id, str) and file_id:
                for answer in await self.upstream.results(deployment, file_id):
                    answers[str(answer.get("custom_id"))] = answer
        for line in await self.store.lines(batch.id, job_id):
            if line.status != "pending":
                continue
            item = answers.get(str(line.line))
            response = (item or {}).get("response") or {}
            body = response.get("body")
            if item is not None and response.get("status_code") == 200 and isinstance(body, dict):
                await self._settle(batch, line, deployment, body, None)
                continue
            if item is not None and item.get("error"):
                error = item["error"]
                code, message = error.get("code") or "upstream_error", error.get("message") or ""
            elif isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = body["error"].get("code") or "upstream_error"
                message = body["error"].get("message") or ""
            else:
                code, message = f"batch_{state.get('status')}", "The provider returned no result"
            status = response.get("status_code") or 502
            await self._settle(batch, line, deployment, None, _error(status, code, message))

    async def _run_direct(self, batch: BatchRecord, job_id: str, name: str) -> None:
        """A deployment without a batch API (a local engine, Anthropic): its lines one by one
        through the interactive provider, a few at a time."""
        deployment = self._deployment(name)
        provider = self.gateway.provider(deployment)
        gate = asyncio.Semaphore(_DIRECT_CONCURRENCY)

        async def one(line: LineRecord) -> None:
            request = dict((line.result or {}).get("request") or {})
            async with gate:
                try:
                    body = await provider.complete(deployment, request)
                except GatewayError as exc:
                    error = _error(exc.status, exc.code or exc.type, str(exc))
                    await self._settle(batch, line, deployment, None, error)
                    return
            await self._settle(batch, line, deployment, body, None)

        pending = [line for line in await self.store.lines(batch.id, job_id)]
        await asyncio.gather(*(one(line) for line in pending if line.status == "pending"))

    async def _settle(
        self,
        batch: BatchRecord,
        line: LineRecord,
        deployment: Deployment,
        body: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> None:
        """Record the line's outcome once; then its spend row at the batch price and its hold
        settled (released when it failed)."""
        request_id = f"{batch.id}-{line.line}"
        result: dict[str, Any] | None = (
            {"body": body, "request_id": request_id} if body is not None else error
        )
        if not await self.store.finish_line(
            batch.id, line.line, "done" if body is not None else "failed", result
        ):
            return  # another process recorded it first
        usage = usage_from(body.get("usage")) if body is not None else None
        usage = usage or Usage(0, 0)
        record = SpendRecord(
            request_id=request_id,
            created_at=_now(),
            status=200 if body is not None else int((error or {}).get("status_code") or 502),
            team=batch.team,
            key_id=batch.key_id,
            requested_model=line.requested_model,
            deployment=line.deployment,
            tier=line.tier,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=deployment.batch_rate.cost(usage) if body is not None else Decimal(0),
            route_reason=f"batch {batch.id}: {line.route_reason}",
            api="batch",
            latency_class="batch",  # the savings report's latency line prices it interactively
            config_hash=self.gateway.config_hash,
        )
        if error is not None:
            record.error_type = str((error.get("error") or {}).get("code") or "upstream_error")
        self.gateway.spend.record(record)
        await settle_request(self.gateway.ledger, await self._hold(batch, line), record)

    # cancelling -> cancelled; validating or in_progress past expires_at -> expired

    async def _stop(self, batch: BatchRecord, status: str) -> None:
        """Cancel the provider jobs; lines without a result are released, not charged."""
        for job in await self.store.jobs(batch.id):
            if job.status == "submitted" and job.upstream_batch_id is not None:
                deployment = self._deployment(job.deployment)
                try:
                    await self.upstream.cancel(deployment, job.upstream_batch_id)
                except Exception as exc:
                    log.warning("batch %s: provider cancel of %s failed: %r", batch.id, job.id, exc)
            await self.store.update_job(job.id, status="cancelled")
        if status == "expired":
            why = _error(
                408, "batch_expired", "The batch expired before this line ran (its expires_at)"
            )
        else:
            why = _error(499, "batch_cancelled", "The batch was cancelled before this line ran")
        for line in await self.store.lines(batch.id):
            if line.status != "pending":
                continue
            if await self.store.finish_line(batch.id, line.line, status, why):
                hold = await self._hold(batch, line)
                if hold is not None:
                    await self.gateway.ledger.settle(hold, Amounts())
        await self._finalize(batch, status)

    # Output

    async def _finalize(self, batch: BatchRecord, status: str) -> None:
        """The output and error files, each in the client's input order."""
        output, errors = [], []
        completed = failed = 0
        for line in await self.store.lines(batch.id):
            result = line.result or {}
            item = {"id": f"{batch.id}-{line.line}", "custom_id": line.custom_id}
            if line.status == "done":
                completed += 1
                response = {"status_code": 200, "request_id": result.get("request_id")}
                output.append(
                    {**item, "response": {**response, "body": result.get("body")}, "error": None}
                )
            elif line.status in ("failed", "cancelled", "expired"):
                failed += line.status == "failed"
                errors.append(
                    {**item, "response": result.get("response"), "error": result.get("error")}
                )
        output_id = await self._write(batch, output)
        error_id = await self._write(batch, errors)
        now = _now()
        done = {f"{status}_at": now}  # completed_at, cancelled_at or expired_at
        await self.store.update_batch(
            batch.id,
            status=status,
            output_file_id=output_id,
            error_file_id=error_id,
            completed=completed,
            failed=failed,
            lease_owner=None,
            **done,
        )

    async def _write(self, batch: BatchRecord, items: list[dict[str, Any]]) -> str | None:
        if not items:
            return None
        content = b"".join(orjson.dumps(item) + b"\n" for item in items)
        name = f"{batch.id}_{'output' if items[0].get('error') is None else 'error'}.jsonl"
        written = await self.store.add_file(batch.team, batch.key_id, "batch_output", name, content)
        return written.id

    # Helpers

    async def _hold(self, batch: BatchRecord, line: LineRecord) -> Any:
        if line.hold_id is None or line.held_at is None:
            return None
        amounts = Amounts(line.held_picousd or 0, line.held_tokens or 0, 1)
        held_at = line.held_at.replace(tzinfo=UTC) if line.held_at.tzinfo is None else line.held_at
        return await self.gateway.ledger.resume(
            line.hold_id, batch.team, batch.key_id, amounts, held_at
        )

    async def _key(self, batch: BatchRecord) -> ApiKey | None:
        keys = await self.gateway.store.list_keys(batch.team)
        return next((k for k in keys if k.id == batch.key_id and k.revoked_at is None), None)

    def _deployment(self, name: str) -> Deployment:
        deployment = self.gateway.catalog.get(name)
        if deployment is None:
            raise LookupError(f"deployment {name!r} is no longer configured")
        return deployment


class _LineError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    """A line's error as OpenAI's error file has it (its status kept for the spend row)."""
    return {
        "status_code": status,
        "response": {"status_code": status, "body": {"error": {"message": message, "code": code}}},
        "error": {"code": code, "message": message},
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
