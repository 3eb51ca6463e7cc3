"""The chat body on the hot path: validated once and sent upstream as it came, its prompt
tokenised once per request."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import tokens
from gateway.schemas import ChatRequest
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

HELLO = [{"role": "user", "content": "Say hello."}]


def test_a_well_typed_body_goes_upstream_as_sent_without_its_metadata() -> None:
    body: dict[str, Any] = {
        "model": "direct",
        "messages": HELLO,
        "temperature": 1,
        "web_search_options": {"search_context_size": "low", "not_in_our_schema": [1, 2]},
        "metadata": {"project": "x"},
    }
    payload = ChatRequest.from_body(body).upstream_payload()
    assert payload == {k: v for k, v in body.items() if k != "metadata"}
    # The very objects decoded from the request: nothing was serialised again.
    assert payload["messages"] is body["messages"]
    assert payload["web_search_options"] is body["web_search_options"]


def test_each_payload_is_a_new_dict_that_callers_may_trim() -> None:
    chat = ChatRequest.from_body({"model": "direct", "messages": HELLO, "stream": True})
    chat.upstream_payload().pop("stream")
    assert chat.upstream_payload()["stream"] is True


def test_a_body_that_needed_coercion_goes_upstream_coerced() -> None:
    body = {"model": "direct", "messages": HELLO, "max_tokens": "5", "stream": "false"}
    payload = ChatRequest.from_body(body).upstream_payload()
    assert (payload["max_tokens"], payload["stream"]) == (5, False)


def test_schema_sent_under_its_field_name_goes_upstream_under_its_wire_name() -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "x", "schema_": {"a": 1}}}
    body = {"model": "direct", "messages": HELLO, "response_format": schema_format}
    payload = ChatRequest.from_body(body).upstream_payload()
    assert payload["response_format"]["json_schema"] == {"name": "x", "schema": {"a": 1}}


async def test_the_upstream_receives_the_body_as_sent(
    gateway: InProcessGateway, upstream: RunningUpstream
) -> None:
    extra = {"temperature": 1, "prediction": {"type": "content", "content": "hi", "x": [1]}}
    body = {"model": "direct", "messages": HELLO, **extra}
    response = await gateway.client.post("/v1/chat/completions", json=body, headers=gateway.auth)
    assert response.status_code == 200, response.text
    sent = upstream.fake.requests[-1]["body"]
    assert {k: sent[k] for k in ("messages", *extra)} == {"messages": HELLO, **extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_budgeted_requests_prompt_is_tokenised_once(
    store_url: str,
    upstream: RunningUpstream,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    counted: list[str] = []

    def spy(name: str, count: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            counted.append(name)
            return count(*args)

        return wrapper

    # The routing count, and the litellm-exact count the hold used to make again.
    monkeypatch.setattr(tokens, "prompt_tokens", spy("routing", tokens.prompt_tokens))
    monkeypatch.setattr(tokens, "chat_tokens", spy("exact", tokens.chat_tokens))

    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        budget = {"team": "search", "period": "monthly", "limit_usd": "100"}
        put = await gw.client.put("/admin/budgets", json=budget, headers=gw.admin.headers)
        assert put.status_code == 200, put.text
        body = {"model": "direct", "messages": HELLO, "stream": stream}
        response = await gw.client.post("/v1/chat/completions", json=body, headers=gw.auth)
        assert response.status_code == 200, response.text
        if stream:
            assert response.text.endswith("data: [DONE]\n\n")
        row = await gw.admin.spend(response.headers["x-request-id"])  # settled and logged
    assert row["status"] == 200 and row["prompt_tokens"] > 0
    # The fake upstream reports usage, so nothing but the routing decision counts the prompt.
    assert counted == ["routing"]
