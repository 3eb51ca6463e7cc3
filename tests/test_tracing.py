"""Must-show (issue 24): OpenTelemetry traces, captured with the SDK's in-memory exporter.

The span tree and attributes of a routed request, a cache hit and a fallback; a stream's root
span ends with its relay; the caller's traceparent is the parent; no prompt text unless
server.trace_prompts; off unless the OTEL_* variables ask.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import create_app
from gateway.settings import Settings
from gateway.tracing import Tracing, tracing_enabled
from tests.conftest import Admin, gateway_config, gateway_env
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, RunningUpstream

HELLO = "Translate 'hello' to French."
CHAT = "chat fake-ok"  # the GenAI span name: operation and upstream model


class Traced:
    def __init__(self, client: openai.AsyncOpenAI, http: httpx.AsyncClient, key: str) -> None:
        self.client, self.http, self.key = client, http, key
        self.exporter = InMemorySpanExporter()

    def trace(self, request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """The request's root span and its children, by the root's request id."""
        spans = self.exporter.get_finished_spans()
        root = next(
            s
            for s in spans
            if s.name == "rightsize.request" and s.attributes["rightsize.request_id"] == request_id
        )
        children = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
        assert all(s.context.trace_id == root.context.trace_id for s in children)
        return root, sorted(children, key=lambda s: s.start_time or 0)


@asynccontextmanager
async def traced_gateway(tmp_path: Path, upstream: RunningUpstream, **extra: Any) -> Any:
    config = gateway_config(
        f"sqlite:///{tmp_path / 'rightsize.db'}",
        upstream,
        policy={
            "selection": "order",
            "retries": {"max_attempts": 2, "backoff_ms": 0},
            "tiers": [
                {"name": "light", "deployments": ["small"]},
                {"name": "flaky", "deployments": ["direct-500", "direct"], "min_demand": 0.99},
            ],
        },
        **extra,
    )
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(
        Settings.model_validate(config), environ=gateway_env(), tracer_provider=provider
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            admin = Admin(http)
            await admin.team("search")
            key = (await admin.key("search"))["key"]
            client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, http_client=http)
            traced = Traced(client, http, key)
            traced.exporter = exporter
            yield traced


@pytest.fixture
async def gw(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[Traced]:
    async with traced_gateway(tmp_path, upstream) as traced:
        yield traced


async def ask(gw: Traced, model: str, **extra: Any) -> str:
    response = await gw.client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": HELLO}], temperature=0, **extra
    )
    return str(response.headers["x-request-id"])


def no_prompt_text(spans: list[ReadableSpan]) -> bool:
    return not any("hello" in str(v) for s in spans for v in (s.attributes or {}).values())


async def test_a_routed_request_is_one_server_span_with_a_child_per_step(gw: Traced) -> None:
    root, children = gw.trace(await ask(gw, "auto"))
    assert root.kind is SpanKind.SERVER and root.parent is None
    assert [s.name for s in children] == [
        "rightsize.cache",
        "rightsize.estimate",
        "rightsize.decide",
        "rightsize.hold",
        CHAT,
        "rightsize.settle",
    ]
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "auto"
    assert (a["rightsize.team"], a["rightsize.tier"], a["rightsize.deployment"]) == (
        "search",
        "light",
        "small",
    )
    assert (a["rightsize.cache"], a["http.response.status_code"]) == ("miss", 200)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert 0 <= a["rightsize.reasoning_demand"] <= 1
    by_name = {s.name: s for s in children}
    estimate = by_name["rightsize.estimate"].attributes
    assert estimate["rightsize.reasoning_demand"] == a["rightsize.reasoning_demand"]
    assert 0 < estimate["rightsize.token_budget_p50"] <= estimate["rightsize.token_budget_p90"]
    assert by_name["rightsize.decide"].attributes["rightsize.tier"] == "light"
    upstream = by_name[CHAT]
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.attributes["gen_ai.provider.name"] == "openai"
    assert upstream.attributes["gen_ai.request.model"] == "fake-ok"
    assert upstream.attributes["gen_ai.request.temperature"] == 0
    assert upstream.attributes["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert upstream.attributes["rightsize.attempt"] == 1
    assert no_prompt_text([root, *children])


async def test_a_cache_hit_has_no_estimate_decision_or_upstream_span(gw: Traced) -> None:
    await ask(gw, "auto")
    root, children = gw.trace(await ask(gw, "auto"))
    assert [s.name for s in children] == ["rightsize.cache", "rightsize.hold", "rightsize.settle"]
    assert children[0].attributes["rightsize.cache"] == "hit"
    assert root.attributes["rightsize.cache"] == "hit"
    assert root.attributes["rightsize.cost_usd"] == "0"
    assert root.attributes["http.response.status_code"] == 200


async def test_a_fallback_shows_the_failed_attempt_and_the_one_that_served(gw: Traced) -> None:
    root, children = gw.trace(await ask(gw, "flaky"))
    attempts = [s for s in children if s.kind is SpanKind.CLIENT]
    assert [s.name for s in attempts] == ["chat fake-500", CHAT]
    failed, served = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "upstream_error"
    assert failed.attributes["rightsize.deployment"] == "direct-500"
    assert (failed.attributes["rightsize.attempt"], served.attributes["rightsize.attempt"]) == (
        1,
        2,
    )
    assert served.status.status_code is StatusCode.UNSET
    assert served.attributes["rightsize.transport"] == "openai_http"
    assert root.attributes["rightsize.attempts"] == 2
    assert root.attributes["rightsize.deployment"] == "direct"
    assert "fallback 'direct'" in root.attributes["rightsize.route_reason"]


async def test_a_streams_root_span_ends_when_the_stream_does(gw: Traced) -> None:
    stream = await gw.client.chat.completions.create(
        model="direct",
        messages=[{"role": "user", "content": HELLO}],
        stream=True,
        stream_options={"include_usage": True},
    )
    ids = {chunk.id async for chunk in stream}
    assert ids
    roots = [s for s in gw.exporter.get_finished_spans() if s.name == "rightsize.request"]
    root, children = gw.trace(str(roots[-1].attributes["rightsize.request_id"]))
    assert root.attributes["rightsize.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == COMPLETION_TOKENS
    assert CHAT in [s.name for s in children]
    assert root.end_time is not None and root.end_time >= max(c.end_time or 0 for c in children)


async def test_the_callers_traceparent_is_the_parent_of_the_request_span(gw: Traced) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = await gw.http.post(
        "/v1/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": HELLO}]},
        headers={
            "authorization": f"Bearer {gw.key}",
            "traceparent": f"00-{trace_id}-{parent_id}-01",
        },
    )
    root, _ = gw.trace(response.headers["x-request-id"])
    assert root.context.trace_id == int(trace_id, 16)
    assert root.parent is not None and root.parent.span_id == int(parent_id, 16)


async def test_the_prompt_is_on_the_span_only_where_trace_prompts_allows_it(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    server = {"trace_prompts": True}
    async with traced_gateway(tmp_path, upstream, router={"enabled": False}, server=server) as gw:
        root, _ = gw.trace(await ask(gw, "small"))
    assert HELLO in str(root.attributes["gen_ai.input.messages"])


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "rs"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_traces_are_on_only_when_the_otel_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert tracing_enabled(environ) is on
    built = Tracing.from_environ(environ, record_prompts=False)
    assert (built is not None) is on
    if built is not None:
        built.shutdown()


async def test_without_otel_variables_the_gateway_has_no_tracer(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    config = gateway_config(f"sqlite:///{tmp_path / 'rs.db'}", upstream, router={"enabled": False})
    app = create_app(Settings.model_validate(config), environ=gateway_env())
    async with app.router.lifespan_context(app):
        assert app.state.gateway.tracing is None
