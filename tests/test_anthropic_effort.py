"""The policy's reasoning effort reaches an Anthropic-format deployment as `thinking` when the
request goes upstream in Anthropic's own shape (POST /v1/messages), as it reaches OpenAI-format
ones as `reasoning_effort`; when Anthropic would refuse it, the request goes as written and the
spend row says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from policies.params import THINKING_BUDGETS
from tests.conftest import InProcessGateway, gateway_env, in_process_gateway
from tests.fake_anthropic import RunningAnthropic
from tests.fake_upstream import RunningUpstream
from tests.test_anthropic_messages import user
from tests.test_anthropic_native import ANTHROPIC_KEY, anthropic_upstream, config, sent_to_anthropic

__all__ = ["anthropic_upstream"]

HEADERS = {"anthropic-version": "2023-06-01"}
BUDGET = THINKING_BUDGETS["high"]


@pytest.fixture
async def gw(
    store_url: str, upstream: RunningUpstream, anthropic_upstream: RunningAnthropic
) -> AsyncIterator[InProcessGateway]:
    base = config(store_url, upstream, anthropic_upstream)
    claude = next(m for m in base["models"] if m["name"] == "claude")
    base["models"].append({**claude, "name": "claude-reason", "capabilities": {"reasoning": True}})
    base["policy"] = {"reasoning_effort": [{"effort": "high"}]}  # every demand: high
    env = gateway_env(FAKE_ANTHROPIC_KEY=ANTHROPIC_KEY)
    async with in_process_gateway(base, env) as gw:
        yield gw


async def ask(gw: InProcessGateway, marker: str, **body: Any) -> dict[str, Any]:
    request = {"model": "claude-reason", "messages": user(marker), **body}
    headers = {"x-api-key": gw.key, **HEADERS}
    response = await gw.client.post("/v1/messages", json=request, headers=headers)
    assert response.status_code == 200, response.text
    return await gw.admin.spend(response.headers["x-request-id"])


@pytest.mark.parametrize("stream", [False, True])
async def test_the_policys_effort_goes_upstream_as_a_thinking_budget(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic, stream: bool
) -> None:
    marker = f"effort-marker-{stream}"
    row = await ask(gw, marker, max_tokens=8000, stream=stream)
    sent = sent_to_anthropic(anthropic_upstream, marker)["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": BUDGET}
    assert "reasoning effort 'high'" in row["route_reason"]
    assert "not sent as thinking" not in row["route_reason"]
    # The OpenAI-shaped body's parameter fitting is not what went upstream: nothing "dropped".
    assert "dropped" not in row["route_reason"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"max_tokens": 1000}, f"max_tokens 1000 is not above the thinking budget {BUDGET}"),
        ({"max_tokens": 8000, "temperature": 0.2}, "temperature or top_k is set"),
    ],
)
async def test_an_effort_anthropic_would_refuse_is_not_sent_and_the_row_says_why(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic, body: dict[str, Any], why: str
) -> None:
    marker = f"refused-effort-{why[:12]}"
    row = await ask(gw, marker, **body)
    sent = sent_to_anthropic(anthropic_upstream, marker)["body"]
    assert "thinking" not in sent
    assert f"reasoning effort 'high' not sent as thinking: {why}" in row["route_reason"]


async def test_the_clients_own_thinking_wins_and_a_model_without_reasoning_gets_none(
    gw: InProcessGateway, anthropic_upstream: RunningAnthropic
) -> None:
    own = {"type": "enabled", "budget_tokens": 1500}
    await ask(gw, "own-thinking-marker", max_tokens=8000, thinking=own)
    assert sent_to_anthropic(anthropic_upstream, "own-thinking-marker")["body"]["thinking"] == own
    await ask(gw, "no-reasoning-marker", max_tokens=8000, model="claude")
    assert "thinking" not in sent_to_anthropic(anthropic_upstream, "no-reasoning-marker")["body"]
