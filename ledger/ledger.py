"""The ledger: hold a request's predicted cost against every budget it counts toward, then settle.

reserve() runs before the upstream call and refuses (BudgetExceeded: the gateway's 429) when a
hold does not fit; settle() runs after it, success or failure, with what the spend log records
for the request. A hold that is never settled (a crashed worker) is released once its process's
heartbeat stops (`ledger.heartbeat_timeout_s`), at the latest after `ledger.reservation_ttl_s`.

When the counters cannot be reached, reserve() refuses (CountersUnreachable: the gateway's 503)
under `ledger.on_outage: fail_closed`, or admits a bounded allowance per process and team
(`fail_open`); a settlement that fails then is retried once they are back.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import httpx

from ledger.backend import Admitted, Claim, CounterBackend, CounterState, NeedsRebuild
from ledger.budgets import Amounts, Budget, BudgetStore, usd
from ledger.errors import BudgetExceeded, BudgetsUnreadable, CountersUnreachable
from ledger.outage import brief, dependency_of, is_outage
from ledger.periods import CurrentWindows, Period, Window, window_at
from ledger.settings import LedgerSettings
from ledger.single_flight import SingleFlight
from policies import TokenPrice, Usage

log = logging.getLogger("rightsize.ledger")

Clock = Callable[[], datetime]
_PICO = Decimal(10) ** 12
_DIMENSIONS = ("usd", "tokens", "requests")
# Settlements that failed during an outage, kept for a retry; beyond this the oldest are dropped
# (their holds still expire; the spend log still has their rows).
_MAX_UNSETTLED = 10_000


@dataclass(frozen=True, slots=True)
class BudgetState:
    """What the routing policy may read: soft budgets past their threshold (cap the tier)."""

    soft_exceeded: tuple[str, ...] = ()

    @property
    def degrade(self) -> bool:
        return bool(self.soft_exceeded)


@dataclass(slots=True)
class Hold:
    """A reservation against every budget of one request."""

    id: str
    budgets: tuple[Budget, ...]
    windows: tuple[Window, ...]
    claims: tuple[Claim, ...]
    amounts: Amounts
    state: BudgetState = field(default_factory=BudgetState)
    settled: bool = False
    # Admitted on the fail-open allowance while the counters were unreachable: not in them.
    local: bool = False


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One budget's current window as it stands."""

    budget: Budget
    window: Window
    spent: Amounts
    reserved: Amounts


class Ledger:
    """Budgets, their counters (Redis or SQL) and the spend log they are rebuilt from."""

    def __init__(
        self,
        budgets: BudgetStore,
        counters: CounterBackend,
        settings: LedgerSettings,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.budgets = budgets
        self.counters = counters
        self.settings = settings
        self.zone = settings.zone()
        self._windows = CurrentWindows(self.zone)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self._cache: dict[tuple[str, str], tuple[float, list[Budget]]] = {}
        self._reading: SingleFlight[tuple[str, str], list[Budget]] = SingleFlight()
        self._soft_logged: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()  # settle_sent's, until they end
        self._webhook = httpx.AsyncClient(timeout=5) if settings.alert_webhook_url else None
        # This process's id: every hold id starts with it, its heartbeat is kept under it.
        self.owner = secrets.token_hex(6)
        # A hold's id within the owner's: a count (a random suffix cost a system call each).
        self._hold_numbers = itertools.count()
        self._maintenance: asyncio.Task[None] | None = None
        # Called before a counter is rebuilt from the spend log: the gateway writes this
        # process's queued spend rows first, so that the rebuild counts them.
        self.before_rebuild: Callable[[], Awaitable[None]] | None = None
        self._down_since: datetime | None = None
        self._allowance_used: dict[str, Amounts] = {}
        self._unsettled: deque[tuple[Hold, Amounts]] = deque()
        self._stale_budgets_logged = False

    def start(self) -> None:
        """Start the heartbeat, the retry of failed settlements and the sweep of dead holds."""
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(self._maintain(), name="ledger-maintenance")

    async def budgets_for(self, team: str, key_id: str) -> list[Budget]:
        """This request's budgets, reused for `ledger.budget_cache_s` within the process."""
        loop_now = asyncio.get_running_loop().time()
        cached = self._cache.get((team, key_id))
        if cached is not None and cached[0] > loop_now:
            return cached[1]
        try:
            # One read for the requests of this team and key that miss the cache meanwhile.
            found = await self._reading.run(
                (team, key_id), functools.partial(self.budgets.for_request, team, key_id)
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            if cached is not None:
                # The store is down: the budgets read last are still the best answer.
                if not self._stale_budgets_logged:
                    self._stale_budgets_logged = True
                    log.warning("budgets cannot be read (%r); using the ones read last", exc)
                return cached[1]
            raise BudgetsUnreadable(
                "Budgets cannot be read: the gateway cannot reach its database; "
                "the request was not sent. Retry in a moment"
            ) from exc
        self._stale_budgets_logged = False
        self._cache[(team, key_id)] = (loop_now + self.settings.budget_cache_s, found)
        return found

    def forget_budgets(self) -> None:
        """Drop the cache after a budget changed in this process."""
        self._cache.clear()

    async def reserve(
        self, team: str, key_id: str, amounts: Amounts, *, ttl_s: float | None = None
    ) -> Hold | None:
        """Hold `amounts` against every budget of the team and key; None when there are none.
        `ttl_s`: how long the hold lasts unsettled (default `ledger.reservation_ttl_s`; a batch
        line's lasts its batch's completion window)."""
        budgets = await self.budgets_for(team, key_id)
        if not budgets:
            return None
        return await self._reserve(team, budgets, amounts, strict=False, ttl_s=ttl_s)

    async def reserve_within(
        self, subject: str, budgets: Sequence[Budget], amounts: Amounts
    ) -> Hold:
        """Hold `amounts` against these budgets, never past a limit: no last stretch is lent and
        an outage refuses (CountersUnreachable) whatever `ledger.on_outage` says. For spend
        the gateway chooses to make (shadow evaluation), whose cap must hold exactly."""
        return await self._reserve(subject, list(budgets), amounts, strict=True)

    async def _reserve(
        self,
        team: str,
        budgets: list[Budget],
        amounts: Amounts,
        *,
        strict: bool,
        ttl_s: float | None = None,
    ) -> Hold:
        now = self.clock()
        windows = tuple(self._windows.at(b.period, now) for b in budgets)
        claims = tuple(_claim(b, w) for b, w in zip(budgets, windows, strict=True))
        hold_id = f"{self.owner}.{next(self._hold_numbers):x}"
        now_ms = _ms(now)
        ttl = self.settings.reservation_ttl_s if ttl_s is None else ttl_s
        expires = now_ms + int(ttl * 1000)
        asked = amounts
        # Rebuilds, and one cut to the last stretch per budget: each pass ends or shrinks.
        for _ in range(4 + len(claims)):
            try:
                result = await self.counters.reserve(hold_id, claims, amounts, now_ms, expires)
                if isinstance(result, NeedsRebuild):
                    for i in result.indexes:
                        await self._rebuild(budgets[i], windows[i], claims[i], now_ms)
                    continue
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._outage(exc)
                if strict:
                    raise counters_unreachable(exc) from exc
                return self._admit_locally(team, budgets, windows, claims, hold_id, amounts, exc)
            self._recovered()
            if isinstance(result, Admitted):
                state = self._budget_state(budgets, windows, result.states)
                return Hold(hold_id, tuple(budgets), windows, claims, amounts, state)
            stretch = None if strict else last_stretch(claims[result.index], result.state, amounts)
            if stretch is not None:
                # Tried as one more atomic reserve: it fits only while the counter still
                # stands as it was read (nothing held, nothing spent since).
                amounts = stretch
                continue
            usage = _usage(budgets[result.index], windows[result.index], result.state)
            dimension = _exceeded(claims[result.index], result.state, amounts)
            log.info("refused %s for %s: %s over its limit", team, usage.budget.id, dimension)
            raise budget_exceeded(team, usage, dimension, asked, now)
        raise RuntimeError("ledger counters kept changing while being reserved against")

    async def settle(self, hold: Hold, actual: Amounts) -> None:
        """Charge what the request used and release the rest of its hold (once)."""
        if hold.settled:
            return
        hold.settled = True
        try:
            states = await self.counters.settle(hold.id, hold.claims, actual, hold.amounts)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage(exc)
            self._keep_unsettled(hold, actual)
            return
        self._recovered()
        for budget, window, state in zip(hold.budgets, hold.windows, states, strict=True):
            self._alerts(budget, window, state, actual)

    async def settle_sent(self, settlement: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
        """Run `settlement` (a coroutine that calls settle() first thing and raises nothing) so
        that it ends after the answer has gone out: returns once its command is sent, with
        what to await for the rest, where the counters apply calls in order (this process's
        next reserve or usage read then counts it; docs/budgets.md, "Settled after the
        answer"). Elsewhere it runs to its end here, and None is returned."""
        if not self.counters.applies_in_order:
            await settlement
            return None
        task = asyncio.get_running_loop().create_task(settlement)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.sleep(0)  # the task's first step packs the command and writes it
        return task

    async def resume(
        self, hold_id: str, team: str, key_id: str, amounts: Amounts, held_at: datetime
    ) -> Hold | None:
        """A hold made earlier, perhaps by another process (a batch line's), to settle it: the
        team's and key's budgets in the windows they were in when it was made."""
        budgets = await self.budgets_for(team, key_id)
        if not budgets:
            return None
        windows = tuple(window_at(b.period, held_at, self.zone) for b in budgets)
        claims = tuple(_claim(b, w) for b, w in zip(budgets, windows, strict=True))
        return Hold(hold_id, tuple(budgets), windows, claims, amounts)

    async def budget_state(self, team: str, key_id: str) -> BudgetState:
        """Soft budgets of this team and key past their threshold, for the policy to read
        before it decides (reserve() reports the same in Hold.state afterwards)."""
        budgets = [b for b in await self.budgets_for(team, key_id) if b.mode == "soft"]
        if not budgets:
            return BudgetState()
        try:
            found = await self.usage(budgets)
        except CountersUnreachable:
            if self.settings.on_outage == "fail_closed":
                raise
            return BudgetState()  # fail_open: reserve() applies the allowance
        states = [CounterState("", u.spent, u.reserved) for u in found]
        return self._budget_state(budgets, [u.window for u in found], states)

    async def budget_used(self, team: str, key_id: str) -> float | None:
        """The largest share (spent + reserved) / limit over the USD and token limits of this
        team's and key's budgets (rate limits aside): policies.TeamContext.budget_used."""
        budgets = [b for b in await self.budgets_for(team, key_id) if b.period is not Period.MINUTE]
        try:
            found = await self.usage(budgets) if budgets else []
        except CountersUnreachable:
            if self.settings.on_outage == "fail_closed":
                raise
            return None  # fail_open: the policy decides as without budgets
        shares = []
        for u in found:
            for limit, used in (
                (u.budget.limit_picousd, u.spent.picousd + u.reserved.picousd),
                (u.budget.limit_tokens, u.spent.tokens + u.reserved.tokens),
            ):
                if limit is not None:
                    shares.append(used / limit if limit > 0 else 1.0)
        return max(shares) if shares else None

    async def usage(self, budgets: Sequence[Budget]) -> list[BudgetUsage]:
        """Spent, reserved and remaining for each budget's current window."""
        now = self.clock()
        windows = [self._windows.at(b.period, now) for b in budgets]
        claims = [_claim(b, w) for b, w in zip(budgets, windows, strict=True)]
        try:
            states = list(await self.counters.read(claims, _ms(now)))
            for i, state in enumerate(states):
                if state is None:
                    await self._rebuild(budgets[i], windows[i], claims[i], _ms(now))
                    states[i] = (await self.counters.read([claims[i]], _ms(now)))[0]
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage(exc)
            raise counters_unreachable(exc) from exc
        self._recovered()
        return [
            _usage(b, w, s or CounterState(c.counter, Amounts(), Amounts()))
            for b, w, c, s in zip(budgets, windows, claims, states, strict=True)
        ]

    async def aclose(self) -> None:
        if self._settling:  # first: an outage among them is kept for the retry below
            await asyncio.wait(self._settling)
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
            await self._retry_unsettled()
            if self._unsettled:
                # Not retired: its heartbeat goes stale, and the other processes' sweep
                # releases these holds. The spend log has the requests' rows.
                log.error(
                    "ledger: %d settlements still pending at shutdown (counters unreachable); "
                    "their holds are released once this process's heartbeat times out",
                    len(self._unsettled),
                )
            else:
                try:
                    released = await self.counters.retire(self.owner)
                    if released:
                        log.warning(
                            "ledger: released %d holds of requests that never settled", released
                        )
                except Exception as exc:
                    log.warning("ledger: could not retire this process's heartbeat: %r", exc)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._webhook is not None:
            await self._webhook.aclose()
        await self.counters.aclose()

    # Outages

    def _outage(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = self.clock()
        if self.settings.on_outage == "fail_closed":
            then = "budgeted requests get 503 until they are back (ledger.on_outage: fail_closed)"
        else:
            then = (
                "budgeted requests are admitted on the fail-open allowance of "
                f"{_allowance_text(self.settings)} per team in this process, then get 503"
            )
        log.error("ledger counters unreachable (%r): %s", exc, then)

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        down_s = (self.clock() - self._down_since).total_seconds()
        self._down_since = None
        admitted = dict(self._allowance_used)
        self._allowance_used.clear()
        log.warning(
            "ledger counters are back after %.1f s; admitted meanwhile on the fail-open "
            "allowance: %s",
            down_s,
            {team: f"${usd(a.picousd)}, {a.requests} requests" for team, a in admitted.items()}
            or "nothing",
        )

    def _admit_locally(
        self,
        team: str,
        budgets: Sequence[Budget],
        windows: Sequence[Window],
        claims: Sequence[Claim],
        hold_id: str,
        amounts: Amounts,
        exc: BaseException,
    ) -> Hold:
        """fail_open: admit without the counters while this team's allowance lasts."""
        if self.settings.on_outage == "fail_closed":
            raise counters_unreachable(exc) from exc
        used = self._allowance_used.get(team, Amounts()) + amounts
        cap_usd = self.settings.outage_allowance_usd
        cap_requests = self.settings.outage_allowance_requests
        if (cap_usd is not None and used.picousd > _pico(cap_usd)) or (
            cap_requests is not None and used.requests > cap_requests
        ):
            log.error(
                "ledger counters unreachable: team %s has used its fail-open allowance (%s); "
                "refusing with 503",
                team,
                _allowance_text(self.settings),
            )
            used_up = f" (the fail-open allowance of {_allowance_text(self.settings)} is used)"
            raise counters_unreachable(exc, used_up) from exc
        self._allowance_used[team] = used
        log.error(
            "FAIL-OPEN: ledger counters unreachable; admitted a request of team %s unchecked "
            "(allowance used in this process: $%s, %d requests; allowance %s)",
            team,
            usd(used.picousd),
            used.requests,
            _allowance_text(self.settings),
        )
        return Hold(hold_id, tuple(budgets), tuple(windows), tuple(claims), amounts, local=True)

    def _keep_unsettled(self, hold: Hold, actual: Amounts) -> None:
        if len(self._unsettled) >= _MAX_UNSETTLED:
            dropped, _ = self._unsettled.popleft()
            log.error("ledger: too many settlements pending; dropped hold %s", dropped.id)
        self._unsettled.append((hold, actual))
        log.warning(
            "ledger counters unreachable: settlement of hold %s kept for a retry (%d pending)",
            hold.id,
            len(self._unsettled),
        )

    async def _retry_unsettled(self) -> None:
        """Settle what failed during an outage. A hold still held is charged; one that was
        lost with the counters is not (a rebuild counts its spend-log row instead)."""
        while self._unsettled:
            hold, actual = self._unsettled[0]
            try:
                # A local hold never was in the counters: charge it where they survived.
                await self.counters.settle(
                    hold.id, hold.claims, actual, hold.amounts, only_held=not hold.local
                )
            except Exception as exc:
                if is_outage(exc):
                    return
                log.exception("ledger: retried settlement of hold %s failed; dropped", hold.id)
            self._unsettled.popleft()

    async def _maintain(self) -> None:
        """Every heartbeat_s: say this process is alive, retry failed settlements, and release
        the holds of processes silent for heartbeat_timeout_s."""
        healthy_since: float | None = None
        loop = asyncio.get_running_loop()
        timeout_ms = int(self.settings.heartbeat_timeout_s * 1000)
        while True:
            try:
                now_ms = _ms(self.clock())
                await self.counters.heartbeat(self.owner, now_ms)
                self._recovered()
                if healthy_since is None:
                    healthy_since = loop.time()
                await self._retry_unsettled()
                # Only once this process has been heard for a whole timeout: after an outage
                # every process's heartbeat is old, and the others need a beat to renew theirs.
                if loop.time() - healthy_since >= self.settings.heartbeat_timeout_s:
                    released = await self.counters.sweep(
                        now_ms - timeout_ms, self.settings.sweep_batch
                    )
                    if released:
                        log.warning(
                            "released %d holds of processes silent for over %g s",
                            released,
                            self.settings.heartbeat_timeout_s,
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                healthy_since = None
                if is_outage(exc):
                    self._outage(exc)
                else:
                    log.exception("ledger maintenance failed")
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _rebuild(self, budget: Budget, window: Window, claim: Claim, now_ms: int) -> None:
        if self.before_rebuild is not None:
            try:
                await self.before_rebuild()
            except Exception:
                # The rows stay journaled and queued; the rebuild counts what is written.
                log.exception("queued spend rows not written before a counter rebuild")
        spent = await self.budgets.spent(budget, window)
        log.info(
            "ledger counter %s rebuilt from the spend log: $%s, %d tokens, %d requests",
            claim.counter,
            usd(spent.picousd),
            spent.tokens,
            spent.requests,
        )
        await self.counters.initialize(claim, spent, now_ms)

    def _budget_state(
        self, budgets: Sequence[Budget], windows: Sequence[Window], states: Sequence[CounterState]
    ) -> BudgetState:
        soft = []
        for budget, state in zip(budgets, states, strict=True):
            limit = budget.limit_picousd
            if budget.mode != "soft" or limit is None:
                continue
            percent = budget.soft_at_percent if budget.soft_at_percent is not None else 100
            if (state.spent.picousd + state.reserved.picousd) * 100 >= limit * percent:
                soft.append(budget.id)
                if state.counter and state.counter not in self._soft_logged:
                    self._soft_logged.add(state.counter)
                    log.warning("soft budget %s is past %d%%", budget.id, percent)
        return BudgetState(tuple(soft))

    def _alerts(self, budget: Budget, window: Window, state: CounterState, actual: Amounts) -> None:
        for dimension, limit, after, added in (
            ("usd", budget.limit_picousd, state.spent.picousd, actual.picousd),
            ("tokens", budget.limit_tokens, state.spent.tokens, actual.tokens),
        ):
            if limit is None or limit <= 0 or added <= 0:
                continue
            before = after - added
            for percent in budget.alert_percents:
                if before * 100 < limit * percent <= after * 100:
                    self._alert(budget, window, dimension, percent, state)

    def _alert(
        self, budget: Budget, window: Window, dimension: str, percent: int, state: CounterState
    ) -> None:
        event = {
            "event": "budget_threshold_crossed",
            "budget": budget.id,
            "window": window.label,
            "dimension": dimension,
            "percent": percent,
            "spent_usd": str(usd(state.spent.picousd)),
            "spent_tokens": state.spent.tokens,
        }
        log.warning("budget alert: %s", event)
        if self._webhook is not None and self.settings.alert_webhook_url:
            task = asyncio.create_task(self._post(self.settings.alert_webhook_url, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, event: dict[str, Any]) -> None:
        assert self._webhook is not None
        try:
            (await self._webhook.post(url, json=event)).raise_for_status()
        except httpx.HTTPError:
            log.exception("budget alert webhook %s failed", url)


def budget_exceeded(
    team: str, usage: BudgetUsage, dimension: str, needed: Amounts, now: datetime
) -> BudgetExceeded:
    """The refusal of a hold that does not fit `usage`'s budget in `dimension`: what the limit,
    the spend and the hold are, and when the window resets."""
    budget, window = usage.budget, usage.window
    rate = budget.period is Period.MINUTE
    retry_after = window.seconds_left(now)
    detail = usage_json(usage, team=team)
    detail["exceeded"] = dimension
    who = f"team {team!r}" if budget.scope == "team" else f"key {budget.subject!r}"
    limit, spent, reserved, need = _dimension(usage, dimension, needed)
    what = "rate limit" if rate else f"{budget.period.value} budget"
    resets = (
        f"It resets at {window.end.isoformat()} (in {retry_after} s)."
        if window.end is not None
        else "It does not reset (total budget)."
    )
    return BudgetExceeded(
        f"{what.capitalize()} exceeded for {who} ({budget.id}, window {window.label}): "
        f"limit {limit}, spent {spent}, reserved {reserved}, remaining "
        f"{_remaining(usage, dimension)}; this request needs up to {need}. {resets}",
        rate=rate,
        detail=detail,
        retry_after=retry_after,
    )


def counters_unreachable(exc: BaseException, more: str = "") -> CountersUnreachable:
    """The refusal of a budgeted request whose counters could not be reached. The client is
    told the failure's class only: its text (hosts, ports, SQL) is for the log."""
    return CountersUnreachable(
        f"Budgets cannot be checked: the ledger's counters ({dependency_of(exc)}) cannot be "
        f"reached ({brief(exc)}); the request was not sent. Retry in a moment{more}"
    )


def output_token_bound(
    *,
    predicted: int | None,
    max_tokens: int | None,
    context_window: int | None,
    prompt_tokens: int,
    default_cap: int,
) -> int:
    """Output tokens to hold: the prediction, else the request's max tokens, else a default cap
    (no more than what the context window leaves); a max tokens also caps a prediction."""
    if predicted is not None:
        return min(predicted, max_tokens) if max_tokens is not None else predicted
    if max_tokens is not None:
        return max_tokens
    if context_window is not None and context_window > prompt_tokens:
        return min(default_cap, context_window - prompt_tokens)
    return default_cap


def last_stretch(claim: Claim, state: CounterState, amounts: Amounts) -> Amounts | None:
    """The hold cut to what is left of a budget it does not fit, or None to refuse.

    The last stretch of a budget, smaller than one request's hold, is lent whole to one request
    when no other hold is in flight on that budget (its reserved USD and tokens are 0): so
    sequential requests use a budget to within one request's cost of its limit, instead of
    being refused with up to one hold left, and concurrent ones cannot share the stretch out
    (while it is lent, the budget is fully held). The request may then pass the limit by what
    it costs beyond what was left. A request limit is never stretched (a request is whole).
    """
    cut = {"picousd": amounts.picousd, "tokens": amounts.tokens}
    for name, limit, spent, held in (
        ("picousd", claim.limit_picousd, state.spent.picousd, state.reserved.picousd),
        ("tokens", claim.limit_tokens, state.spent.tokens, state.reserved.tokens),
    ):
        if limit is None or spent + held + cut[name] <= limit:
            continue
        left = limit - spent - held
        if held > 0 or left <= 0:
            return None
        cut[name] = left
    if claim.limit_requests is not None and (
        state.spent.requests + state.reserved.requests + amounts.requests > claim.limit_requests
    ):
        return None
    return Amounts(cut["picousd"], cut["tokens"], amounts.requests)


def hold_amounts(price: TokenPrice, prompt_tokens: int, output_tokens: int) -> Amounts:
    """A request's hold: its predicted cost rounded up to a whole pico-dollar, tokens, 1 request."""
    cost = price.cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens))
    pico = int((cost * _PICO).to_integral_value(rounding=ROUND_CEILING))
    return Amounts(pico, prompt_tokens + output_tokens, 1)


def usage_json(usage: BudgetUsage, *, team: str | None = None) -> dict[str, Any]:
    """A budget's window as the admin API and the 429 body show it (money as decimal strings)."""
    budget, window, spent, held = usage.budget, usage.window, usage.spent, usage.reserved
    data: dict[str, Any] = {
        "id": budget.id,
        "scope": budget.scope,
        "team": team if budget.scope == "key" else budget.subject,
        "key_id": budget.subject if budget.scope == "key" else None,
        "period": budget.period.value,
        "mode": budget.mode,
        "window": window.label,
        "window_start": window.start.isoformat() if window.start else None,
        "resets_at": window.end.isoformat() if window.end else None,
    }
    for name, limit, s, r in (
        ("usd", budget.limit_picousd, spent.picousd, held.picousd),
        ("tokens", budget.limit_tokens, spent.tokens, held.tokens),
        ("requests", budget.limit_requests, spent.requests, held.requests),
    ):
        money = name == "usd"
        show = (lambda v: _usd_text(v)) if money else (lambda v: v)
        data[f"limit_{name}"] = None if limit is None else show(limit)
        data[f"spent_{name}"] = show(s)
        data[f"reserved_{name}"] = show(r)
        data[f"remaining_{name}"] = None if limit is None else show(max(limit - s - r, 0))
    return data


def _claim(budget: Budget, window: Window) -> Claim:
    expires = None
    if window.end is not None:
        grace = timedelta(minutes=2) if budget.period is Period.MINUTE else timedelta(days=2)
        expires = _ms(window.end + grace)
    return Claim(budget.counter(window), *budget.limits(), expires_at_ms=expires)


def _usage(budget: Budget, window: Window, state: CounterState) -> BudgetUsage:
    return BudgetUsage(budget, window, state.spent, state.reserved)


def _exceeded(claim: Claim, state: CounterState, amounts: Amounts) -> str:
    for name, limit, spent, held, amount in (
        ("usd", claim.limit_picousd, state.spent.picousd, state.reserved.picousd, amounts.picousd),
        ("tokens", claim.limit_tokens, state.spent.tokens, state.reserved.tokens, amounts.tokens),
        ("requests", claim.limit_requests, state.spent.requests, state.reserved.requests, 1),
    ):
        if limit is not None and spent + held + amount > limit:
            return name
    return "usd"


def _dimension(usage: BudgetUsage, dimension: str, needed: Amounts) -> tuple[str, ...]:
    b, s, r = usage.budget, usage.spent, usage.reserved
    if dimension == "usd":
        values = (b.limit_picousd or 0, s.picousd, r.picousd, needed.picousd)
        return tuple(f"${_usd_text(v)}" for v in values)
    if dimension == "tokens":
        values = (b.limit_tokens or 0, s.tokens, r.tokens, needed.tokens)
        return tuple(f"{v} tokens" for v in values)
    values = (b.limit_requests or 0, s.requests, r.requests, 1)
    return tuple(f"{v} requests" for v in values)


def _remaining(usage: BudgetUsage, dimension: str) -> str:
    b, s, r = usage.budget, usage.spent, usage.reserved
    if dimension == "usd":
        return f"${_usd_text(max((b.limit_picousd or 0) - s.picousd - r.picousd, 0))}"
    if dimension == "tokens":
        return f"{max((b.limit_tokens or 0) - s.tokens - r.tokens, 0)} tokens"
    return f"{max((b.limit_requests or 0) - s.requests - r.requests, 0)} requests"


def _usd_text(picousd: int) -> str:
    value = usd(picousd)
    return format(value.normalize(), "f") if value else "0"


def _ms(when: datetime) -> int:
    return math.floor(when.timestamp() * 1000)


def _pico(value: Decimal) -> int:
    return int((value * _PICO).to_integral_value(rounding=ROUND_CEILING))


def _allowance_text(settings: LedgerSettings) -> str:
    parts = []
    if settings.outage_allowance_usd is not None:
        parts.append(f"${settings.outage_allowance_usd}")
    if settings.outage_allowance_requests is not None:
        parts.append(f"{settings.outage_allowance_requests} requests")
    return " and ".join(parts) or "nothing"
