"""A pinned model's estimate runs beside the upstream call when nothing before the call reads it.

The answer still carries the demand headers and the spend log the same route reason; where
the decision or the hold reads the estimate (auto, a budget, a reasoning model's effort, a
context window), the estimate comes first, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.pipeline.steps import decision_reads_estimate
from gateway.schemas import ChatRequest
from gateway.state import Gateway
from policies import (
    Catalog,
    ModelInfo,
    ModelSpec,
    PolicyEngine,
    PolicySpec,
    Refusal,
    RoutingRequest,
    TeamContext,
)
from router import Estimate, EstimateBatcher
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

HELLO = [{"role": "user", "content": "Translate 'hello' to French."}]
PINNED_REASON = "pinned model 'direct'; chose 'direct' in tier 'standard'"


class _WaitsForTheUpstream:
    """Answers a real estimate once the upstream has received the request (or after 0.5 s),
    and notes which it was: an estimate beside the call sees the call arrive first."""

    def __init__(self, real: EstimateBatcher | None, upstream: RunningUpstream) -> None:
        self.real = real
        self.upstream = upstream
        self.upstream_had_the_request: list[bool] = []

    async def estimate(self, prompt: str) -> Estimate:
        seen = len(self.upstream.fake.requests)
        for _ in range(100):  # 0.5 s at most
            if len(self.upstream.fake.requests) > seen:
                break
            await asyncio.sleep(0.005)
        self.upstream_had_the_request.append(len(self.upstream.fake.requests) > seen)
        assert self.real is not None
        return await self.real.estimate(prompt)


class _Fails:
    async def estimate(self, prompt: str) -> Estimate:
        raise RuntimeError("the encoder is gone")


@pytest.fixture
async def gw(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(
        gateway_config(f"sqlite:///{tmp_path / 'gw.db'}", upstream)
    ) as gw:
        yield gw


def _state(gw: InProcessGateway) -> Gateway:
    state: Gateway = gw.app.state.gateway
    return state


def _watch(gw: InProcessGateway, upstream: RunningUpstream) -> _WaitsForTheUpstream:
    state = _state(gw)
    watcher = _WaitsForTheUpstream(state.estimator, upstream)
    state.estimator = watcher  # type: ignore[assignment]
    return watcher


async def _post(gw: InProcessGateway, **body: Any) -> Any:
    payload = {"messages": HELLO, **body}
    return await gw.client.post(
        "/v1/chat/completions", content=orjson.dumps(payload), headers=gw.auth
    )


async def test_a_pinned_models_estimate_runs_while_the_upstream_answers(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    watcher = _watch(gw, upstream)
    response = await _post(gw, model="direct")
    assert response.status_code == 200, response.text
    assert watcher.upstream_had_the_request == [True]
    assert 0.0 <= float(response.headers["x-rightsize-demand"]) <= 1.0
    p50, p90 = map(int, response.headers["x-rightsize-token-budget"].split("/"))
    assert 0 < p50 <= p90
    row = await gw.admin.spend(response.headers["x-request-id"])
    assert (row["status"], row["route_reason"]) == (200, PINNED_REASON)


async def test_a_pinned_stream_carries_the_estimate_in_its_headers(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    watcher = _watch(gw, upstream)
    response = await _post(gw, model="direct", stream=True)
    assert response.status_code == 200
    assert response.text.rstrip().endswith("data: [DONE]")
    assert watcher.upstream_had_the_request == [True]
    assert "x-rightsize-demand" in response.headers
    assert "/" in response.headers["x-rightsize-token-budget"]
    row = await gw.admin.spend(response.headers["x-request-id"])
    assert (row["stream"], row["route_reason"]) == (True, PINNED_REASON)


async def test_the_pinned_estimate_equals_the_one_made_before_the_call(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    beside = await _post(gw, model="direct")
    before = await _post(gw, model="auto")  # auto reads it: estimated first
    for header in ("x-rightsize-demand", "x-rightsize-token-budget"):
        assert beside.headers[header] == before.headers[header]


async def test_auto_is_estimated_before_the_call(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    watcher = _watch(gw, upstream)
    response = await _post(gw, model="auto")
    assert response.status_code == 200
    assert watcher.upstream_had_the_request == [False]


async def test_a_team_with_a_budget_is_estimated_before_the_call(
    gw: InProcessGateway, upstream: RunningUpstream
) -> None:
    """Its hold is the estimate's p90 tokens."""
    budget = {"team": "search", "period": "monthly", "limit_usd": "10"}
    put = await gw.client.put("/admin/budgets", json=budget, headers=gw.admin.headers)
    assert put.status_code == 200, put.text
    watcher = _watch(gw, upstream)
    response = await _post(gw, model="direct")
    assert response.status_code == 200
    assert watcher.upstream_had_the_request == [False]
    assert "x-rightsize-demand" in response.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_router_is_logged_and_the_pinned_request_served_without_demand(
    gw: InProcessGateway, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.ERROR, logger="rightsize.chat")
    _state(gw).estimator = _Fails()  # type: ignore[assignment]
    response = await _post(gw, model="direct", stream=stream)
    assert response.status_code == 200
    assert "x-rightsize-demand" not in response.headers
    assert any("the router failed" in r.getMessage() for r in caplog.records)
    row = await gw.admin.spend(response.headers["x-request-id"])
    assert (row["status"], row["route_reason"]) == (200, PINNED_REASON)


# The rule itself, against the policy engine: where it says the decision does not read the
# estimate, every estimate gives the decision that none gives.

EASY = Estimate(0.05, 20, 40, "chat")
HARD = Estimate(0.95, 3000, 90_000, "math")
POLICY = {
    "tiers": [
        {"name": "light", "deployments": ["cheap"]},
        {"name": "standard", "deployments": ["plain", "thinker", "windowed"], "min_demand": 0.5},
    ]
}


def _engine() -> tuple[PolicyEngine, Catalog]:
    def model(name: str, **caps: Any) -> ModelSpec:
        return ModelSpec.model_validate(
            {
                "name": name,
                "model": f"openai/{name}",
                "price": {"input_per_mtok": "1", "output_per_mtok": "4"},
                "capabilities": caps,
            }
        )

    specs = [
        model("cheap"),
        model("plain"),
        model("thinker", reasoning=True),
        model("windowed", context_window=8192),
    ]
    catalog = Catalog.build(specs, lambda _: ModelInfo(price=None))
    return PolicyEngine(catalog, PolicySpec.model_validate(POLICY), default=None), catalog


def _served(
    engine: PolicyEngine, chat: ChatRequest, estimate: Estimate | None, team: TeamContext
) -> tuple[object, ...] | str:
    """What the request is served with: deployment, tier, reason, fallbacks, effort."""
    request = RoutingRequest(model=chat.model, prompt_tokens=10, max_output_tokens=chat.max_tokens)
    try:
        d = engine.decide(request, estimate, team)
    except Refusal as exc:
        return f"refused: {exc}"
    return (d.deployment.name, d.tier, d.reason, d.fallbacks, d.reasoning_effort)


@pytest.mark.parametrize(
    ("model", "extra", "team", "reads"),
    [
        ("plain", {}, TeamContext("t"), False),
        ("windowed", {"max_tokens": 100}, TeamContext("t"), False),
        ("windowed", {}, TeamContext("t"), True),  # p90 tokens might overflow its window
        ("thinker", {}, TeamContext("t"), True),  # its reasoning effort follows demand
        ("plain", {}, TeamContext("t", soft_budgets=("team:t:monthly",)), True),  # capped
        ("plain", {}, TeamContext("t", budget_used=0.5), False),  # no soft_budget section
        ("light", {}, TeamContext("t"), True),  # a tier's pool
        ("auto", {}, TeamContext("t"), True),
    ],
)
def test_the_rule_finds_no_read_only_where_no_estimate_changes_the_decision(
    model: str, extra: dict[str, Any], team: TeamContext, reads: bool
) -> None:
    engine, catalog = _engine()
    chat = ChatRequest.model_validate({"model": model, "messages": HELLO, **extra})
    assert decision_reads_estimate(engine, catalog, chat, 10, team) is reads
    if not reads:
        assert len({_served(engine, chat, e, team) for e in (None, EASY, HARD)}) == 1


@pytest.mark.parametrize("model", ["thinker", "windowed"])
def test_where_the_rule_finds_a_read_an_estimate_does_change_the_decision(model: str) -> None:
    engine, _ = _engine()
    chat = ChatRequest.model_validate({"model": model, "messages": HELLO})
    team = TeamContext("t")
    assert len({_served(engine, chat, e, team) for e in (EASY, HARD)}) == 2
