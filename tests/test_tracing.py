"""OpenTelemetry traces: the span tree and attributes of a request, read from the SDK's
in-memory exporter; off unless the OTEL_* variables name an exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.settings import ConfigError
from gateway.tracing import provider_from_environment
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

SECRET_PROMPT = "What is the capital of the hidden kingdom of Zanzibarland?"
MESSAGES = [{"role": "user", "content": SECRET_PROMPT}]
STEPS = ["rightsize.cache", "rightsize.estimate", "rightsize.decide", "rightsize.hold"]


class Traced:
    def __init__(self, gw: InProcessGateway, exporter: InMemorySpanExporter) -> None:
        self.gw = gw
        self.exporter = exporter

    async def post(self, **body: Any) -> Any:
        body = {"model": "standard", "messages": MESSAGES, "temperature": 0, **body}
        return await self.gw.client.post(
            "/v1/chat/completions", content=orjson.dumps(body), headers=self.gw.auth
        )

    def trace_of(self, request_id: str) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        root = next(
            s
            for s in spans
            if s.name == "rightsize.request" and s.attributes["rightsize.request_id"] == request_id
        )
        return [s for s in spans if s.context.trace_id == root.context.trace_id]


def _config(store_url: str, upstream: RunningUpstream, **server: Any) -> dict[str, Any]:
    return gateway_config(
        store_url,
        upstream,
        server=server,
        cache={"backend": "memory"},
        policy={
            "selection": "order",
            "retries": {"max_attempts": 3, "backoff_ms": 0},
            "tiers": [
                {"name": "standard", "deployments": ["direct"]},
                {
                    "name": "flaky",
                    "deployments": ["direct-500", "direct-cached"],
                    "min_demand": 0.99,
                },
            ],
        },
    )


async def _traced(config: dict[str, Any]) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with in_process_gateway(config, tracer_provider=provider) as gw:
        yield Traced(gw, exporter)


@pytest.fixture
async def traced(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[Traced]:
    async for t in _traced(_config(f"sqlite:///{tmp_path / 'gw.db'}", upstream)):
        yield t


def _by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def _root(spans: list[ReadableSpan]) -> ReadableSpan:
    return next(s for s in spans if s.name == "rightsize.request")


def _children_of(root: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    return sorted(
        s.name for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
    )


async def test_a_routed_request_is_one_span_with_a_child_per_step(traced: Traced) -> None:
    response = await traced.post()
    assert response.status_code == 200, response.text

    spans = traced.trace_of(response.headers["x-request-id"])
    root = _root(spans)
    assert root.kind == SpanKind.SERVER
    assert root.parent is None
    assert _children_of(root, spans) == sorted([*STEPS, "chat fake-ok", "rightsize.settle"])
    attributes = root.attributes
    assert attributes["rightsize.team"] == "search"
    assert attributes["rightsize.tier"] == "standard"
    assert attributes["rightsize.deployment"] == "direct"
    assert attributes["gen_ai.request.model"] == "standard"
    assert attributes["http.response.status_code"] == 200
    row = await traced.gw.admin.spend(response.headers["x-request-id"])
    assert attributes["rightsize.cost_usd"] == response.headers["x-rightsize-cost-usd"]
    assert Decimal(attributes["rightsize.cost_usd"]) == Decimal(row["cost_usd"])
    assert attributes["gen_ai.usage.input_tokens"] == row["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == row["completion_tokens"]


async def test_the_upstream_attempt_carries_the_genai_client_attributes(traced: Traced) -> None:
    response = await traced.post()

    (attempt,) = _by_name(traced.trace_of(response.headers["x-request-id"]))["chat fake-ok"]
    assert attempt.kind == SpanKind.CLIENT
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "fake-ok"
    assert attempt.attributes["gen_ai.response.model"] == response.json()["model"]
    usage = response.json()["usage"]
    assert attempt.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attempt.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]


async def test_the_estimate_and_decide_spans_say_what_the_router_and_policy_chose(
    traced: Traced,
) -> None:
    response = await traced.post(model="auto")

    named = _by_name(traced.trace_of(response.headers["x-request-id"]))
    (estimate,) = named["rightsize.estimate"]
    assert (
        f"{estimate.attributes['rightsize.reasoning_demand']:.3f}"
        == (response.headers["x-rightsize-demand"])
    )
    (decide,) = named["rightsize.decide"]
    assert decide.attributes["rightsize.tier"] == response.headers["x-rightsize-tier"]


async def test_a_cache_hit_has_no_upstream_attempt(traced: Traced) -> None:
    await traced.post()
    hit = await traced.post()
    assert hit.headers["x-rightsize-cache"] == "hit"

    spans = traced.trace_of(hit.headers["x-request-id"])
    names = _by_name(spans)
    assert not [n for n in names if n.startswith("chat ")]
    assert names["rightsize.cache"][0].attributes["rightsize.cache.result"] == "hit"
    assert _root(spans).attributes["rightsize.cache_hit"] is True


async def test_a_fallback_is_two_attempt_spans_the_first_failed(traced: Traced) -> None:
    response = await traced.post(model="flaky")
    assert response.headers["x-rightsize-model"] == "direct-cached"

    spans = traced.trace_of(response.headers["x-request-id"])
    attempts = sorted(
        (s for s in spans if s.name.startswith("chat ")), key=lambda s: s.start_time or 0
    )
    assert [s.attributes["rightsize.deployment"] for s in attempts] == [
        "direct-500",
        "direct-cached",
    ]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert _root(spans).attributes["rightsize.attempts"] == 2


async def test_a_stream_ends_its_span_after_the_last_chunk_with_the_settlement_inside(
    traced: Traced,
) -> None:
    client = openai.AsyncOpenAI(
        api_key=traced.gw.key, base_url="http://gateway/v1", http_client=traced.gw.client
    )
    stream = await client.chat.completions.create(
        model="standard",
        messages=MESSAGES,
        stream=True,
        temperature=0.5,  # type: ignore[arg-type]
    )
    request_id = stream.response.headers["x-request-id"]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text

    spans = traced.trace_of(request_id)
    root = _root(spans)
    (settle,) = _by_name(spans)["rightsize.settle"]
    assert settle.parent is not None and settle.parent.span_id == root.context.span_id
    assert root.end_time is not None and settle.end_time is not None
    assert root.end_time >= settle.end_time
    assert root.attributes["gen_ai.usage.output_tokens"] > 0


async def test_a_refused_request_is_traced_with_its_status(traced: Traced) -> None:
    response = await traced.gw.client.post(
        "/v1/chat/completions",
        content=orjson.dumps({"model": "no-such-model", "messages": MESSAGES}),
        headers=traced.gw.auth,
    )
    assert response.status_code == 404

    root = _root(traced.trace_of(response.headers["x-request-id"]))
    assert root.attributes["http.response.status_code"] == 404
    assert root.attributes["error.type"]


async def test_no_span_carries_prompt_text_by_default(traced: Traced) -> None:
    response = await traced.post(model="auto")

    values = [str(v) for s in traced.exporter.get_finished_spans() for v in s.attributes.values()]
    assert response.status_code == 200
    assert values
    assert not [v for v in values if "Zanzibarland" in v]


async def test_trace_prompts_puts_the_messages_on_the_request_span(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    config = _config(f"sqlite:///{tmp_path / 'gw.db'}", upstream, trace_prompts=True)
    async for traced in _traced(config):
        response = await traced.post()
        root = _root(traced.trace_of(response.headers["x-request-id"]))
        assert orjson.loads(root.attributes["gen_ai.input.messages"]) == MESSAGES


# Turning it on: the standard variables.


def test_tracing_is_off_without_an_exporter_named() -> None:
    assert provider_from_environment({}) is None
    assert provider_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        provider_from_environment(
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
        )
        is None
    )


def test_an_otlp_endpoint_alone_turns_on_otlp_export() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = provider_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert provider is not None
    try:
        exporters = [p.span_exporter for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
        assert [type(e) for e in exporters] == [OTLPSpanExporter]
        assert provider.resource.attributes["service.name"] == "rightsize"
    finally:
        provider.shutdown()


def test_an_unknown_exporter_fails_the_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        provider_from_environment({"OTEL_TRACES_EXPORTER": "zipkin-over-carrier-pigeon"})


async def test_without_otel_variables_the_gateway_makes_no_spans(gateway: InProcessGateway) -> None:
    assert gateway.app.state.gateway.tracer is None
