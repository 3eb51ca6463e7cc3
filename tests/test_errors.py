"""Every error a client can get: OpenAI-shaped body, right status, and a spend-log row."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import InProcessGateway, gateway_config, in_process_gateway

HELLO = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    return dict(body["error"])


async def post(
    gw: InProcessGateway, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await gw.client.post(
        "/v1/chat/completions", content=content, headers=headers if headers is not None else gw.auth
    )


async def logged(gw: InProcessGateway, response: httpx.Response) -> dict[str, Any]:
    return await gw.admin.spend(response.headers["x-request-id"])


async def test_invalid_json_is_400_and_logged(gateway: InProcessGateway) -> None:
    response = await post(gateway, b'{"model": "small", "messages": [')
    error = assert_openai_error(response, 400, "invalid_request")
    assert "not valid JSON" in error["message"]
    row = await logged(gateway, response)
    assert (row["status"], row["error_type"], row["team"]) == (400, "invalid_request", "search")


async def test_unknown_field_is_400_naming_it(gateway: InProcessGateway) -> None:
    response = await post(gateway, {"model": "small", "messages": HELLO, "temprature": 0.2})
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == "temprature"
    assert (await logged(gateway, response))["status"] == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "small", "messages": []}, "messages"),
        ({"model": "small", "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"model": "small", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO}, "model"),
        (["not", "an", "object"], None),
    ],
)
async def test_invalid_body_is_400_naming_the_field(
    gateway: InProcessGateway, body: Any, param: str | None
) -> None:
    response = await post(gateway, body)
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == param


async def test_openai_request_with_images_tools_and_options_is_accepted(
    gateway: InProcessGateway,
) -> None:
    body = {
        "model": "direct",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "temperature": 0,
        "top_p": 1,
        "max_tokens": 20,
        "max_completion_tokens": 20,
        "stop": ["\n"],
        "seed": 7,
        "user": "u1",
        "metadata": {"job": "nightly"},
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
    }
    response = await post(gateway, body)
    assert response.status_code == 200, response.text


async def test_missing_key_is_401_and_logged_without_a_team(gateway: InProcessGateway) -> None:
    response = await post(gateway, {"model": "small", "messages": HELLO}, headers={})
    assert_openai_error(response, 401, "missing_api_key")
    row = await logged(gateway, response)
    assert (row["status"], row["team"]) == (401, None)


async def test_unknown_key_is_401(gateway: InProcessGateway) -> None:
    response = await post(
        gateway, {"model": "small", "messages": HELLO}, {"authorization": "Bearer rs-nope"}
    )
    assert_openai_error(response, 401, "invalid_api_key")
    assert (await logged(gateway, response))["error_type"] == "invalid_api_key"


async def test_revoked_key_is_401(gateway: InProcessGateway) -> None:
    issued = await gateway.admin.key("search")
    auth = {"authorization": f"Bearer {issued['key']}"}
    assert (await post(gateway, {"model": "small", "messages": HELLO}, auth)).status_code == 200
    revoke = await gateway.client.delete(
        f"/admin/keys/{issued['id']}", headers=gateway.admin.headers
    )
    assert revoke.status_code == 200 and revoke.json()["revoked_at"]
    response = await post(gateway, {"model": "small", "messages": HELLO}, auth)
    assert_openai_error(response, 401, "revoked_api_key")
    assert (await logged(gateway, response))["key_id"] == issued["id"]


async def test_model_outside_the_keys_allow_list_is_403(gateway: InProcessGateway) -> None:
    issued = await gateway.admin.key("search", allowed_models=["light"])
    auth = {"authorization": f"Bearer {issued['key']}"}
    allowed = await post(gateway, {"model": "small", "messages": HELLO}, auth)
    assert allowed.status_code == 200, "a model of an allowed tier is allowed"
    response = await post(gateway, {"model": "direct", "messages": HELLO}, auth)
    error = assert_openai_error(response, 403, "model_not_allowed")
    assert error["param"] == "model"
    row = await logged(gateway, response)
    assert (row["status"], row["requested_model"]) == (403, "direct")


async def test_restricted_key_lists_only_its_models(gateway: InProcessGateway) -> None:
    issued = await gateway.admin.key("search", allowed_models=["light"])
    response = await gateway.client.get(
        "/v1/models", headers={"authorization": f"Bearer {issued['key']}"}
    )
    assert [m["id"] for m in response.json()["data"]] == ["light", "small"]


async def test_unknown_model_is_404(gateway: InProcessGateway) -> None:
    response = await post(gateway, {"model": "gpt-17", "messages": HELLO})
    error = assert_openai_error(response, 404, "model_not_found")
    assert "gpt-17" in error["message"]
    assert (await logged(gateway, response))["requested_model"] == "gpt-17"


async def test_body_over_the_limit_is_413(store_url: str, upstream: Any) -> None:
    config = gateway_config(store_url, upstream, server={"max_body_bytes": 2048})
    async with in_process_gateway(config) as gw:
        big = {"model": "small", "messages": [{"role": "user", "content": "x" * 4096}]}
        response = await post(gw, big)
        assert_openai_error(response, 413, "request_too_large")
        assert (await logged(gw, response))["status"] == 413


@pytest.mark.parametrize("model", ["direct-500", "small-500"])
async def test_upstream_error_is_502_naming_the_deployment(
    gateway: InProcessGateway, model: str
) -> None:
    response = await post(gateway, {"model": model, "messages": HELLO})
    error = assert_openai_error(response, 502, "upstream_error")
    assert repr(model) in error["message"]
    row = await logged(gateway, response)
    assert (row["status"], row["deployment"], row["error_type"]) == (502, model, "upstream_error")


@pytest.mark.parametrize("model", ["direct-400", "small-400"])
async def test_upstream_rejecting_the_request_is_400(gateway: InProcessGateway, model: str) -> None:
    response = await post(gateway, {"model": model, "messages": HELLO})
    error = assert_openai_error(response, 400, "upstream_rejected_request")
    assert "rejects this request" in error["message"]


@pytest.mark.parametrize("model", ["direct-slow", "small-slow"])
async def test_upstream_timeout_is_504(gateway: InProcessGateway, model: str) -> None:
    response = await post(gateway, {"model": model, "messages": HELLO})
    error = assert_openai_error(response, 504, "upstream_timeout")
    assert repr(model) in error["message"]
    row = await logged(gateway, response)
    assert row["status"] == 504 and row["upstream_ms"] >= 400


@pytest.mark.parametrize("model", ["direct-500", "small-500"])
async def test_stream_failing_before_the_first_byte_is_a_plain_502(
    gateway: InProcessGateway, model: str
) -> None:
    response = await post(gateway, {"model": model, "messages": HELLO, "stream": True})
    assert_openai_error(response, 502, "upstream_error")
    assert (await logged(gateway, response))["stream"] is True


async def test_stream_failing_after_the_first_byte_ends_with_an_error_event(
    gateway: InProcessGateway,
) -> None:
    body = {"model": "direct-midstream", "messages": HELLO, "stream": True}
    response = await post(gateway, body)
    assert response.status_code == 200
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["code"] == "upstream_error"
    assert "direct-midstream" in last["error"]["message"]
    row = await logged(gateway, response)
    assert (row["status"], row["usage_estimated"]) == (502, True)
    assert row["completion_tokens"] > 0, "what was streamed before the failure is charged"


async def test_admin_api_rejects_a_wrong_master_key(gateway: InProcessGateway) -> None:
    response = await gateway.client.get("/admin/teams", headers={"authorization": "Bearer no"})
    assert_openai_error(response, 401, "invalid_master_key")


async def test_unknown_route_is_an_openai_shaped_404(gateway: InProcessGateway) -> None:
    response = await gateway.client.get("/v1/nothing-here")
    assert_openai_error(response, 404, "not_found")


async def test_a_spend_listing_limit_below_one_is_400_not_a_database_overflow(
    gateway: InProcessGateway,
) -> None:
    # Found by schemathesis: SQLite overflowed on a limit below -2**63 and the API answered 500.
    for limit in ("0", "-9223372036854775809"):
        response = await gateway.client.get(
            "/admin/spend", params={"limit": limit}, headers=gateway.admin.headers
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "limit"
