"""The request pipeline's steps, each run alone with fakes of its neighbours."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.api.chat import openai_events
from gateway.cache import NOT_CACHED
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    UpstreamBadRequest,
    UpstreamError,
)
from gateway.local_cost import LocalCostMeter
from gateway.pipeline import END, StreamEvent
from gateway.pipeline.attempts import OpenStream, attempt_with_fallbacks, backoff_s, open_stream
from gateway.pipeline.call import Call
from gateway.pipeline.relay import relay
from gateway.pipeline.steps import decide
from gateway.schemas import ChatRequest
from gateway.store import ApiKey, SpendRecord
from policies import (
    Capabilities,
    Decision,
    Deployment,
    DeploymentState,
    NotAllowed,
    Refusal,
    RoutingRequest,
    TeamContext,
    TokenPrice,
    UnknownModel,
)
from router import Estimate

PRICE = TokenPrice(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.0000005"))
HELLO = [{"role": "user", "content": "hi"}]


def deployment(name: str) -> Deployment:
    return Deployment(
        name, f"openai/{name}", None, None, "small", "openai_http", 60, PRICE, Capabilities(), False
    )


FIRST, SECOND, THIRD, FOURTH = (deployment(n) for n in ("first", "second", "third", "fourth"))


class FakeStream:
    """An upstream stream of the given chunks, or failing with the given error at once."""

    def __init__(self, name: str, answer: Any, closed: list[str]) -> None:
        self.name, self.answer, self.closed = name, answer, closed
        self.chunks = [] if isinstance(answer, BaseException) else list(answer)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if isinstance(self.answer, BaseException):
            raise self.answer
        if not self.chunks:
            raise StopAsyncIteration
        return dict(self.chunks.pop(0))

    async def aclose(self) -> None:
        self.closed.append(self.name)


@dataclass
class FakeProvider:
    """Answers from `answers` by deployment name; an exception there is raised instead."""

    answers: dict[str, Any]
    called: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    async def complete(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        self.called.append(deployment.name)
        answer = self.answers[deployment.name]
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    def stream(self, deployment: Deployment, payload: dict[str, Any]) -> FakeStream:
        self.called.append(deployment.name)
        return FakeStream(deployment.name, self.answers[deployment.name], self.closed)

    async def aclose(self) -> None:
        pass


def failed(name: str) -> UpstreamError:
    return UpstreamError(name, f"{name} is down", upstream_status=500)


def rejected(name: str) -> UpstreamBadRequest:
    return UpstreamBadRequest(name, f"{name} refuses this request", upstream_status=400)


class Attempts:
    """attempt_with_fallbacks with its fallbacks and sleeps written down."""

    def __init__(self, backoff_ms: float = 0) -> None:
        self.backoff_ms = backoff_ms
        self.fallbacks: list[tuple[str, str]] = []
        self.slept: list[float] = []

    async def plain(self, provider: FakeProvider, *to: Deployment) -> tuple[Deployment, Any]:
        async def once(d: Deployment) -> dict[str, Any]:
            return await provider.complete(d, {})

        return await self._run(to, once)

    async def streamed(self, provider: FakeProvider, *to: Deployment) -> tuple[Deployment, Any]:
        async def once(d: Deployment) -> OpenStream:
            return await open_stream(provider, d, {})

        return await self._run(to, once)

    async def _run(self, to: tuple[Deployment, ...], once: Any) -> tuple[Deployment, Any]:
        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        return await attempt_with_fallbacks(
            to,
            once,
            backoff_ms=self.backoff_ms,
            on_fallback=lambda error, d: self.fallbacks.append((error.deployment, d.name)),
            sleep=sleep,
        )


async def test_plain_attempt_falls_back_to_the_next_deployment_on_an_upstream_error() -> None:
    provider = FakeProvider({"first": failed("first"), "second": {"id": "from-second"}})
    attempts = Attempts()
    used, answer = await attempts.plain(provider, FIRST, SECOND)
    assert (used.name, answer["id"]) == ("second", "from-second")
    assert attempts.fallbacks == [("first", "second")]


async def test_plain_attempt_does_not_fall_back_on_a_bad_request() -> None:
    provider = FakeProvider({"first": rejected("first"), "second": {"id": "from-second"}})
    attempts = Attempts()
    with pytest.raises(UpstreamBadRequest):
        await attempts.plain(provider, FIRST, SECOND)
    assert provider.called == ["first"]
    assert attempts.fallbacks == []


async def test_streamed_attempt_falls_back_when_the_stream_fails_before_its_first_chunk() -> None:
    provider = FakeProvider({"first": failed("first"), "second": [{"id": "c1"}, {"id": "c2"}]})
    attempts = Attempts()
    used, opened = await attempts.streamed(provider, FIRST, SECOND)
    assert (used.name, opened.first["id"]) == ("second", "c1")
    assert attempts.fallbacks == [("first", "second")]
    assert provider.closed == ["first"]  # the failed stream is closed, the chosen one is not


async def test_streamed_attempt_falls_back_when_the_stream_ends_before_any_chunk() -> None:
    provider = FakeProvider({"first": [], "second": [{"id": "c1"}]})
    attempts = Attempts()
    used, _ = await attempts.streamed(provider, FIRST, SECOND)
    assert used.name == "second"
    assert attempts.fallbacks == [("first", "second")]


async def test_streamed_attempt_does_not_fall_back_on_a_bad_request_and_closes_it() -> None:
    provider = FakeProvider({"first": rejected("first"), "second": [{"id": "c1"}]})
    attempts = Attempts()
    with pytest.raises(UpstreamBadRequest):
        await attempts.streamed(provider, FIRST, SECOND)
    assert provider.called == ["first"]
    assert provider.closed == ["first"]


async def test_the_last_upstream_error_is_raised_when_every_deployment_fails() -> None:
    provider = FakeProvider({"first": failed("first"), "second": failed("second")})
    with pytest.raises(UpstreamError) as raised:
        await Attempts().plain(provider, FIRST, SECOND)
    assert raised.value.deployment == "second"


async def test_backoff_doubles_after_each_failed_attempt() -> None:
    provider = FakeProvider(
        {"first": failed("first"), "second": failed("second"), "third": failed("third")}
        | {"fourth": {"id": "from-fourth"}}
    )
    attempts = Attempts(backoff_ms=100)
    used, _ = await attempts.plain(provider, FIRST, SECOND, THIRD, FOURTH)
    assert used.name == "fourth"
    assert attempts.slept == [0.1, 0.2, 0.4]
    assert [backoff_s(250, n) for n in range(3)] == [0.25, 0.5, 1.0]


class RefusingPolicy:
    """A policy whose every decision is the given refusal."""

    def __init__(self, refusal: Exception) -> None:
        self.refusal = refusal

    def decide(
        self,
        request: RoutingRequest,
        estimate: Estimate | None,
        team: TeamContext,
        states: Mapping[str, DeploymentState] | None = None,
    ) -> Decision:
        raise self.refusal


class ChoosingPolicy:
    def decide(
        self,
        request: RoutingRequest,
        estimate: Estimate | None,
        team: TeamContext,
        states: Mapping[str, DeploymentState] | None = None,
    ) -> Decision:
        return Decision(FIRST, "small", "the only one")


def api_key(allowed: tuple[str, ...] | None = None) -> ApiKey:
    return ApiKey("key1", "search", None, "sk-…abcd", allowed, datetime.now(UTC), None)


def chat(**extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "auto", "messages": HELLO, **extra})


@pytest.mark.parametrize(
    ("refusal", "error", "status"),
    [
        (UnknownModel("nope"), NotFound, 404),
        (NotAllowed("not for this team"), PermissionDenied, 403),
        (Refusal(400, "context_length_exceeded", "too long for every model"), InvalidRequest, 400),
    ],
)
def test_decision_step_answers_policy_refusals_as_client_errors_on_model(
    refusal: Exception, error: type[GatewayError], status: int
) -> None:
    with pytest.raises(error) as raised:
        decide(RefusingPolicy(refusal), api_key(), chat(), HELLO, 5, None)  # type: ignore[arg-type]
    assert (raised.value.status, raised.value.param) == (status, "model")


def test_decision_step_keeps_the_refusals_code() -> None:
    refusal = Refusal(400, "context_length_exceeded", "too long for every model")
    with pytest.raises(InvalidRequest) as raised:
        decide(RefusingPolicy(refusal), api_key(), chat(), HELLO, 5, None)  # type: ignore[arg-type]
    assert raised.value.code == "context_length_exceeded"


def test_decision_step_refuses_a_deployment_the_key_may_not_use() -> None:
    with pytest.raises(PermissionDenied):
        decide(ChoosingPolicy(), api_key(("other",)), chat(), HELLO, 5, None)  # type: ignore[arg-type]


@dataclass
class FakeSpend:
    records: list[SpendRecord] = field(default_factory=list)

    def record(self, record: SpendRecord) -> None:
        self.records.append(record)


@dataclass
class FakeGateway:
    """What the relay touches: the spend log, the ledger (no hold here) and the cache."""

    spend: FakeSpend = field(default_factory=FakeSpend)
    ledger: None = None
    cache: None = None
    metrics: None = None
    latency: None = None  # no tier with a latency objective
    log_requests: bool = False
    shadow: None = None  # no shadow evaluation
    local_cost: LocalCostMeter = field(default_factory=LocalCostMeter)


USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def chunk(text: str, usage: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "c", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage:
        out["usage"] = usage
    return out


async def upstream(*items: dict[str, Any] | Exception) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def in_flight() -> Call:
    return Call(SpendRecord(request_id="req_1", created_at=datetime.now(UTC), status=200))


async def test_relay_ends_with_a_usage_chunk_carrying_the_cost_and_logs_the_call() -> None:
    gateway, call = FakeGateway(), in_flight()
    opened = OpenStream(chunk("Hel", USAGE), upstream(chunk("lo")))
    request = chat(stream=True, stream_options={"include_usage": True})
    events = [e async for e in relay(gateway, call, request, FIRST, opened, NOT_CACHED)]  # type: ignore[arg-type]
    assert events[-1] is END
    assert events[-2]["usage"]["cost_usd"] == "0.000018"  # 10 x 0.000001 + 4 x 0.000002
    assert gateway.spend.records == [call.record]
    assert (call.record.status, call.record.cost_usd) == (200, Decimal("0.000018"))


async def test_relay_sends_an_upstream_error_after_the_first_byte_as_an_event() -> None:
    gateway, call = FakeGateway(), in_flight()
    rest = upstream(failed("first"))
    opened = OpenStream(chunk("Hel", USAGE), rest)
    events = [e async for e in relay(gateway, call, chat(stream=True), FIRST, opened, NOT_CACHED)]  # type: ignore[arg-type]
    assert isinstance(events[-1], UpstreamError)
    assert END not in events
    assert (call.record.status, call.record.completion_tokens) == (502, 4)
    assert gateway.spend.records == [call.record]


async def test_relay_logs_a_client_that_hangs_up_as_499_and_closes_the_upstream() -> None:
    gateway, call = FakeGateway(), in_flight()
    provider = FakeProvider({"first": [chunk("lo"), chunk("!")]})
    opened = OpenStream(chunk("Hel", USAGE), provider.stream(FIRST, {}))
    events = relay(gateway, call, chat(stream=True), FIRST, opened, NOT_CACHED)  # type: ignore[arg-type]
    await anext(events)
    await events.aclose()
    assert (call.record.status, call.record.error_type) == (499, "client_closed")
    assert provider.closed == ["first"]
    assert call.record.cost_usd == Decimal("0.000018")  # the partial answer is still charged
    assert gateway.spend.records == [call.record]


async def events_then_close(closed: list[str]) -> AsyncGenerator[StreamEvent, None]:
    try:
        yield {"id": "c1"}
        yield failed("first")
        yield END
    finally:
        closed.append("relay")


async def test_openai_adapter_writes_chunks_errors_and_the_end_as_server_sent_events() -> None:
    body = [part async for part in openai_events(events_then_close([]))]
    assert body[0] == b'data: {"id":"c1"}\n\n'
    assert body[1].startswith(b'data: {"error":{"message":"')
    assert body[2] == b"data: [DONE]\n\n"


async def test_openai_adapter_closes_the_relay_when_the_client_leaves() -> None:
    closed: list[str] = []
    body = openai_events(events_then_close(closed))
    await anext(body)
    await body.aclose()
    assert closed == ["relay"]  # at once, not whenever the garbage collector gets to it
