"""Routing through the gateway: router headers, policy tiers, fallbacks on failing upstreams."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import ANSWER, RunningUpstream

HELLO = [{"role": "user", "content": "Translate 'hello' to French."}]
PROOF = [
    {
        "role": "user",
        "content": "Prove step by step that there are infinitely many primes p such that p+2 is "
        "also prime is open, then prove rigorously that the sum of reciprocals of all primes "
        "diverges, justifying each inequality and every limit you take.",
    }
]


def policy_config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    return gateway_config(
        store_url,
        upstream,
        policy={
            "selection": "order",
            "retries": {"max_attempts": 3, "backoff_ms": 0},
            "tiers": [
                {"name": "flaky", "deployments": ["direct-500", "small-500", "direct"]},
                {"name": "broken", "deployments": ["direct-500"], "min_demand": 0.99},
            ],
        },
    )


@pytest.fixture
async def routed(store_url: str, upstream: RunningUpstream) -> Any:
    async with in_process_gateway(policy_config(store_url, upstream)) as gw:
        yield gw


async def post(gw: InProcessGateway, body: dict[str, Any]) -> Any:
    return await gw.client.post("/v1/chat/completions", content=orjson.dumps(body), headers=gw.auth)


async def test_every_routed_response_carries_the_routers_demand_and_token_budget(
    gateway: InProcessGateway,
) -> None:
    easy = await post(gateway, {"model": "auto", "messages": HELLO})
    hard = await post(gateway, {"model": "auto", "messages": PROOF})
    for response in (easy, hard):
        assert response.status_code == 200
        p50, p90 = map(int, response.headers["x-rightsize-token-budget"].split("/"))
        assert 0 < p50 <= p90
    assert float(hard.headers["x-rightsize-demand"]) > float(easy.headers["x-rightsize-demand"])


async def test_a_failing_deployment_falls_back_to_the_next_in_its_tier(
    routed: InProcessGateway,
) -> None:
    response = await post(routed, {"model": "flaky", "messages": HELLO})
    assert response.status_code == 200, response.text
    assert response.headers["x-rightsize-model"] == "direct"
    row = await routed.admin.spend(response.headers["x-request-id"])
    assert (row["deployment"], row["attempts"], row["status"]) == ("direct", 3, 200)
    assert "upstream_error -> fallback 'small-500'" in row["route_reason"]
    assert "upstream_error -> fallback 'direct'" in row["route_reason"]


async def test_a_stream_whose_first_deployment_fails_is_served_cleanly_by_the_fallback(
    routed: InProcessGateway,
) -> None:
    body = {"model": "flaky", "messages": HELLO, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    response = await post(routed, body)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == ANSWER
    assert response.headers["x-rightsize-model"] == "direct"
    row = await routed.admin.spend(response.headers["x-request-id"])
    assert (row["deployment"], row["attempts"], row["stream"]) == ("direct", 3, True)


async def test_a_stream_fallback_parses_in_the_openai_sdk(routed: InProcessGateway) -> None:
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=routed.key, http_client=routed.client
    )
    stream = await client.chat.completions.create(model="flaky", messages=HELLO, stream=True)
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text) == ANSWER


async def test_when_every_deployment_fails_the_last_error_is_returned(
    routed: InProcessGateway,
) -> None:
    response = await post(routed, {"model": "broken", "messages": HELLO})
    assert response.status_code == 502
    assert "'direct-500'" in response.json()["error"]["message"]
    row = await routed.admin.spend(response.headers["x-request-id"])
    assert row["route_reason"].startswith("tier 'broken' requested")


async def test_the_spend_log_keeps_the_policy_explanation(gateway: InProcessGateway) -> None:
    response = await post(gateway, {"model": "auto", "messages": HELLO})
    row = await gateway.admin.spend(response.headers["x-request-id"])
    assert "no policy tiers: auto -> default tier 'standard'" in row["route_reason"]
    assert "chose 'direct' in tier 'standard'" in row["route_reason"]
