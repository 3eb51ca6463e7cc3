"""Shadow evaluation (docs/shadow.md): a sampled `auto` request's other tier, judged in pairs.

Once the client's answer is complete, a sampled request becomes a `ShadowJob` on a bounded
queue (full: dropped and counted, never waited for). Workers call the compared tier that did
not serve it, through the same providers, then the judge twice with the answers' positions
swapped, and write one `OutcomeRecord`. Every call is held first against the team's named
shadow budget, strictly (no last stretch), so the daily cap holds under concurrency; each call
leaves a spend-log row under that budget's name, its route reason saying `shadow` or `judge`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.local_cost import LocalCostMeter
from gateway.params import ParamTable
from gateway.providers import Provider
from gateway.spend import SpendWriter
from gateway.store import OutcomeRecord, SpendRecord, Store, to_picousd
from gateway.tokens import count_prompt_tokens
from gateway.usage import completion_text, count_usage, usage_from
from ledger.budgets import Amounts, Budget
from ledger.errors import LedgerError
from ledger.ledger import Hold, Ledger, hold_amounts
from ledger.periods import Period
from policies import Catalog, Deployment, PolicyEngine, ShadowPolicy, ShadowSpec, shadow_tiers

log = logging.getLogger("rightsize.shadow")

# MT-Bench's pairwise judge prompt ("pair-v2", Zheng et al. 2023), verbatim.
JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. You should choose the assistant that "
    "follows the user's instructions and answers the user's question better. Your evaluation "
    "should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of their responses. Begin your evaluation by comparing the two "
    "responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Do not favor certain names of "
    "the assistants. Be as objective as possible. After providing your explanation, output your "
    'final verdict by strictly following this format: "[[A]]" if assistant A is better, '
    '"[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
JUDGE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, Any]]:
    """The judge's conversation for one order of the pair."""
    user = JUDGE_USER.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "C" (tie) from the judge's answer; None when it names none or several."""
    found = set(_VERDICT.findall(text or ""))
    return found.pop() if len(found) == 1 else None


def combine(light_first: str, strong_first: str) -> str:
    """The verdict from both orders (each "light", "strong" or "tie"): a preference only when
    both orders agree on it, else a tie (position bias cancelled)."""
    return light_first if light_first == strong_first else "tie"


def prompt_hash(prompt_text: str) -> str:
    return hashlib.sha256(prompt_text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """A served request chosen for shadow evaluation, as the workers need it."""

    request_id: str
    team: str
    spec: ShadowSpec
    messages: list[dict[str, Any]]
    payload: dict[str, Any]  # the client's body, as the pipeline sent it upstream
    prompt_text: str  # what the router read (router.prompt_from_messages)
    served_tier: str
    served_deployment: str
    served_text: str
    served_completion_tokens: int
    reasoning_demand: float | None = None
    category: str | None = None
    router_artifact: str | None = None
    # The snapshot that served the request (gateway/reload.py): its tiers and deployments judge
    # it, whatever a reload swapped in since. None: the one given to start().
    gateway: Gateway | None = None


@dataclass(slots=True)
class ShadowCounts:
    """What the loop did since start: for logs, tests and /metrics readers."""

    sampled: int = 0
    dropped: int = 0  # the queue was full
    capped: int = 0  # the named budget's daily cap refused the shadow call
    written: int = 0
    failed: int = 0  # a row with an error


@dataclass(slots=True)
class _Judged:
    verdict: str | None = None
    cost: Decimal = field(default_factory=Decimal)
    error: str | None = None


class Gateway(Protocol):
    """What the runner uses of the gateway's state (gateway.state.Gateway)."""

    catalog: Catalog
    policy: PolicyEngine
    store: Store
    spend: SpendWriter
    ledger: Ledger
    params: ParamTable
    local_cost: LocalCostMeter

    def provider(self, deployment: Deployment) -> Provider: ...


class ShadowObserver(Protocol):
    """Told of each job's fate (gateway.metrics.Metrics: `rightsize_shadow_jobs_total`)."""

    def shadow_job(self, team: str, result: str) -> None: ...


class ShadowRunner:
    """The sampler, the bounded queue and its workers."""

    def __init__(self, policy: ShadowPolicy, observer: ShadowObserver | None = None) -> None:
        self.policy = policy
        self.counts = ShadowCounts()
        self._observer = observer
        self._random = random.Random(policy.seed)
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=policy.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._gateway: Gateway | None = None
        self._busy = 0

    @property
    def active(self) -> bool:
        """Whether any team may be sampled at all (else the pipeline skips the draw)."""
        return self.policy.default.enabled or any(
            self.policy.for_team(team).enabled for team in self.policy.teams
        )

    def sample(self, team: str, served_tier: str | None, tiers: Sequence[str]) -> ShadowSpec | None:
        """The team's settings when this request is drawn for shadowing, else None. Only a
        request served by one of the two compared tiers is eligible (and drawn)."""
        spec = self.policy.for_team(team)
        if not spec.enabled or served_tier not in shadow_tiers(spec, tiers):
            return None
        if self._random.random() >= spec.sample_rate:
            return None
        self._count(team, "sampled")
        return spec

    def offer(self, job: ShadowJob) -> bool:
        """Queue the job; when the queue is full it is dropped and counted, never waited for."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._count(job.team, "dropped")
            log.warning(
                "shadow queue full (%d): request %s not shadowed",
                self._queue.maxsize,
                job.request_id,
            )
            return False
        return True

    def start(self, gateway: Gateway) -> None:
        self._gateway = gateway
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"shadow-{i}")
                for i in range(self.policy.concurrency)
            ]

    async def drain(self, timeout_s: float = 30) -> None:
        """Wait until every queued job is done (tests, shutdown)."""
        await asyncio.wait_for(self._queue.join(), timeout_s)

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.evaluate(job)
            except Exception:
                log.exception("shadow evaluation of request %s failed", job.request_id)
            finally:
                self._queue.task_done()

    async def evaluate(self, job: ShadowJob) -> OutcomeRecord | None:
        """Call the other tier and the judge, write the outcome; None when the cap refused it."""
        gateway = job.gateway or self._gateway
        assert gateway is not None, "ShadowRunner.start() first"
        spec = job.spec
        light, strong = shadow_tiers(spec, gateway.policy.tiers)
        served = "light" if job.served_tier == light else "strong"
        other_tier = strong if served == "light" else light
        other = gateway.policy.tier_deployments(other_tier)[0]
        judge = gateway.catalog.get(spec.judge or "")
        assert judge is not None and spec.budget is not None  # validate_policy checked both
        outcome = OutcomeRecord(
            request_id=job.request_id,
            created_at=datetime.now(UTC),
            prompt_hash=prompt_hash(job.prompt_text),
            served=served,
            light_tier=light,
            strong_tier=strong,
            team=job.team,
            prompt_text=job.prompt_text if spec.keep_prompt_text else None,
            reasoning_demand=job.reasoning_demand,
            category=job.category,
            router_artifact=job.router_artifact,
            judge_deployment=judge.name,
        )
        setattr(outcome, f"{served}_deployment", job.served_deployment)
        setattr(outcome, f"{served}_completion_tokens", job.served_completion_tokens)
        other_side = "strong" if served == "light" else "light"
        setattr(outcome, f"{other_side}_deployment", other.name)

        body = {k: v for k, v in job.payload.items() if k not in ("stream", "stream_options")}
        body["max_tokens"] = min(
            spec.max_output_tokens,
            body.get("max_completion_tokens") or body.get("max_tokens") or spec.max_output_tokens,
        )
        body.pop("max_completion_tokens", None)
        n_prompt = await count_prompt_tokens(job.messages)
        hold = await self._hold(
            spec, hold_amounts(other.price, n_prompt, body["max_tokens"]), job.request_id
        )
        if hold is None:
            self._count(job.team, "capped")
            return None
        reason = f"shadow: {other_tier} beside {job.served_tier} for team {job.team}"
        answer, cost, error = await self._call(
            gateway, other, body, job, hold, other_tier, reason, job.messages
        )
        outcome.shadow_cost_usd = cost
        if error is not None:
            outcome.error = f"shadow: {error}"
        else:
            assert answer is not None
            text, tokens = answer
            setattr(outcome, f"{other_side}_completion_tokens", tokens)
            answers = {served: job.served_text, other_side: text}
            judged = await self._judge(gateway, judge, job, answers)
            outcome.verdict, outcome.judge_cost_usd = judged.verdict, judged.cost
            if judged.error is not None:
                outcome.error = f"judge: {judged.error}"
        await gateway.store.insert_outcomes([outcome])
        self._count(job.team, "written")
        if outcome.error is not None:
            self._count(job.team, "failed")
        return outcome

    def _count(self, team: str, result: str) -> None:
        setattr(self.counts, result, getattr(self.counts, result) + 1)
        if self._observer is not None:
            self._observer.shadow_job(team, result)

    async def _hold(self, spec: ShadowSpec, amounts: Amounts, request_id: str) -> Hold | None:
        gateway = self._gateway
        assert gateway is not None and spec.budget is not None
        cap = Budget("team", spec.budget, Period.DAILY, limit_usd=spec.daily_usd_cap)
        try:
            return await gateway.ledger.reserve_within(spec.budget, [cap], amounts)
        except LedgerError as exc:
            log.info("request %s not shadowed: %s", request_id, exc)
            return None

    async def _judge(
        self, gateway: Gateway, judge: Deployment, job: ShadowJob, answers: dict[str, str]
    ) -> _Judged:
        """Both orders (light as A, then strong as A), each held before it is called."""
        spec = job.spec
        result = _Judged()
        verdicts: list[str] = []
        for first, second in (("light", "strong"), ("strong", "light")):
            messages = judge_messages(job.prompt_text, answers[first], answers[second])
            body = {"model": judge.name, "messages": messages, "max_tokens": spec.judge_max_tokens}
            n_prompt = await count_prompt_tokens(messages)
            amounts = hold_amounts(judge.price, n_prompt, spec.judge_max_tokens)
            hold = await self._hold(spec, amounts, job.request_id)
            if hold is None:
                result.error = "the shadow budget's daily cap was reached before the judge"
                return result
            reason = f"judge: {first} as A, {second} as B, for team {job.team}"
            answer, cost, error = await self._call(
                gateway, judge, body, job, hold, None, reason, messages
            )
            result.cost += cost
            if error is not None:
                result.error = error
                return result
            assert answer is not None
            label = parse_verdict(answer[0])
            if label is None:
                result.error = f"unparseable verdict: {answer[0][:200]!r}"
                return result
            verdicts.append({"A": first, "B": second, "C": "tie"}[label])
        result.verdict = combine(verdicts[0], verdicts[1])
        return result

    async def _call(
        self,
        gateway: Gateway,
        deployment: Deployment,
        body: dict[str, Any],
        job: ShadowJob,
        hold: Hold,
        tier: str | None,
        reason: str,
        messages: list[dict[str, Any]],
    ) -> tuple[tuple[str, int] | None, Decimal, str | None]:
        """One upstream call, its spend row and its settlement: ((text, completion tokens) or
        None, cost, error)."""
        spec = job.spec
        record = SpendRecord(
            request_id=job.request_id,
            created_at=datetime.now(UTC),
            status=200,
            team=spec.budget,
            requested_model=deployment.name,
            deployment=deployment.name,
            tier=tier,
            route_reason=reason,
        )
        started = asyncio.get_running_loop().time()
        answer: tuple[str, int] | None = None
        error: str | None = None
        try:
            fitted = (await gateway.params.fit(deployment, body)).payload
            result = await gateway.provider(deployment).complete(deployment, fitted)
            record.upstream_ms = (asyncio.get_running_loop().time() - started) * 1000
            text = "".join(
                completion_text(c.get("message") or {}) for c in result.get("choices") or ()
            )
            usage = usage_from(result.get("usage"))
            if usage is None:
                usage = await asyncio.to_thread(count_usage, deployment.model, messages, text)
                record.usage_estimated = True
            record.prompt_tokens, record.completion_tokens = (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
            record.cached_tokens = usage.cached_tokens
            record.cost_usd = gateway.local_cost.cost(deployment, usage, record)
            answer = (text, usage.completion_tokens)
        except GatewayError as exc:
            record.status, record.error_type = exc.status, exc.code or exc.type
            error = f"{deployment.name}: {exc.message}"[:500]
        except Exception as exc:
            record.status, record.error_type = 500, "shadow_failed"
            error = f"{deployment.name}: {exc!r}"[:500]
            log.exception("shadow call to %s failed", deployment.name)
        # As requests do: the row is journaled before the ledger moves.
        gateway.spend.record(record)
        used = _tokens(record)
        try:
            await gateway.ledger.settle(hold, Amounts(to_picousd(record.cost_usd), used, 1))
        except Exception:
            log.exception("ledger settle failed for the shadow of request %s", job.request_id)
        return answer, record.cost_usd, error


def _tokens(record: SpendRecord) -> int:
    return record.prompt_tokens + record.completion_tokens
