"""The API against its own OpenAPI document, fuzzed by schemathesis: no 5xx, and every status
code, content type and JSON body one that the document declares for the operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import MASTER_KEY, gateway_config, gateway_env, in_process_gateway
from tests.fake_upstream import RunningUpstream

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Bounded so that the whole file runs in well under a minute on a busy two-core machine.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def app(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The in-process app with its document served, the fake upstream its only model (through
    each transport)."""
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    config: dict[str, Any] = {
        "server": {"openapi": True},
        "store": {"url": f"sqlite:///{directory / 'r.db'}"},
        "models": [
            {
                "name": name,
                "model": "openai/fake-ok",
                "api_base": upstream.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "transport": transport,
                "tier": tier,
                "price": {"input_per_mtok": "1", "output_per_mtok": "2"},
            }
            for name, transport, tier in (
                ("fake", "openai_http", "standard"),
                ("fake-litellm", "litellm", None),
            )
        ],
    }
    app = create_app(Settings.model_validate(config), environ=gateway_env())
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()  # schemathesis started the lifespan: end it, close the store


@pytest.fixture(scope="module")
def schema(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def auth(app: FastAPI, schema: Any) -> dict[str, str]:
    """A team key, as every tenant sends it."""
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    with asgi.get_client(app) as client:
        assert client.post("/admin/teams", json={"name": "fuzz"}, headers=admin).ok
        response = client.post("/admin/keys", json={"team": "fuzz"}, headers=admin)
        assert response.status_code == 201, response.text
        return {"authorization": f"Bearer {response.json()['key']}"}


def fuzz(strategy: SearchStrategy[Any], auth: dict[str, str]) -> None:
    @FUZZ
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(headers=auth, checks=CHECKS)

    run()


def with_model(case: Any, model: str) -> Any:
    case.body["model"] = model
    return case


def test_chat_completions_answers_valid_bodies_as_documented(
    schema: Any, auth: dict[str, str]
) -> None:
    # Mostly names the gateway knows, so that bodies reach the router, the cache and upstream.
    models = st.sampled_from(["fake", "fake-litellm", "auto", "standard", "unknown-model"])
    cases = st.tuples(schema["/v1/chat/completions"]["POST"].as_strategy(), models)
    fuzz(cases.map(lambda pair: with_model(*pair)), auth)


def test_explicit_nulls_through_litellm_are_answered(app: FastAPI, auth: dict[str, str]) -> None:
    # Found by the fuzzer: litellm took `web_search_options: null` for options and failed (502).
    body = {"model": "fake-litellm", "messages": [{"role": "user", "content": "hi"}]}
    nulls = {"web_search_options": None, "tools": None, "stop": None, "user": None}
    with asgi.get_client(app) as client:
        response = client.post("/v1/chat/completions", json={**body, **nulls}, headers=auth)
    assert response.status_code == 200, response.text


def test_chat_completions_refuses_invalid_bodies_with_a_documented_400(
    schema: Any, auth: dict[str, str]
) -> None:
    chat = schema["/v1/chat/completions"]["POST"]
    fuzz(chat.as_strategy(generation_mode=GenerationMode.NEGATIVE), auth)


def test_anthropic_messages_answers_valid_bodies_as_documented(
    schema: Any, auth: dict[str, str]
) -> None:
    # Never a 500 for any body the Anthropic request schema allows (issue 23).
    models = st.sampled_from(["fake", "fake-litellm", "auto", "standard", "unknown-model"])
    cases = st.tuples(schema["/v1/messages"]["POST"].as_strategy(), models)
    fuzz(cases.map(lambda pair: with_model(*pair)), auth)


def test_anthropic_messages_refuses_invalid_bodies_with_a_documented_400(
    schema: Any, auth: dict[str, str]
) -> None:
    messages = schema["/v1/messages"]["POST"]
    fuzz(messages.as_strategy(generation_mode=GenerationMode.NEGATIVE), auth)


def test_every_other_operation_answers_as_documented(schema: Any, auth: dict[str, str]) -> None:
    others = schema.exclude(path=["/v1/chat/completions", "/v1/messages"])
    fuzz(others.as_strategy(), auth)


def test_admin_operations_with_the_master_key_answer_as_documented(schema: Any) -> None:
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    fuzz(schema.include(path_regex="^/admin/").as_strategy(), admin)


def test_the_document_declares_400_where_the_api_answers_400_never_422(schema: Any) -> None:
    declared = {
        status
        for item in schema.raw_schema["paths"].values()
        for operation in item.values()
        for status in operation["responses"]
    }
    assert "422" not in declared
    chat = schema.raw_schema["paths"]["/v1/chat/completions"]["post"]
    assert "400" in chat["responses"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}


def test_the_document_describes_the_anthropic_routes_in_anthropics_shapes(schema: Any) -> None:
    paths, components = schema.raw_schema["paths"], schema.raw_schema["components"]["schemas"]
    for path, body in (
        ("/v1/messages", "AnthropicMessagesRequest"),
        ("/v1/messages/count_tokens", "AnthropicCountTokensRequest"),
    ):
        operation = paths[path]["post"]
        sent = operation["requestBody"]["content"]["application/json"]["schema"]
        assert sent == {"$ref": f"#/components/schemas/{body}"} and body in components
        error = operation["responses"]["401"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/AnthropicError"}
    # The Anthropic blocks are named apart from the OpenAI request's parts.
    assert {"AnthropicTextBlock", "TextPart"} <= set(components)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
async def test_document_and_docs_are_404_unless_server_openapi_is_on(
    tmp_path: Path, upstream: RunningUpstream, path: str
) -> None:
    async with in_process_gateway(gateway_config(f"sqlite:///{tmp_path / 'r.db'}", upstream)) as gw:
        response = await gw.client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
