"""OpenTelemetry traces, opt-in through the standard `OTEL_*` variables (docs/observability.md).

One span per request (`rightsize.request`) with a child span per step: cache, estimate,
decide, hold, each upstream attempt (`chat {model}`, GenAI semantic conventions) and settle.
Off unless an exporter is named: then no span object is made and each step pays one attribute
check. No prompt text is recorded unless `server.trace_prompts` allows it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from gateway import __version__
from gateway.settings import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from gateway.state import Gateway
    from gateway.store import SpendRecord
    from policies import Deployment

P = ParamSpec("P")
R = TypeVar("R")

INSTRUMENTATION = "rightsize"
_EXTRA = "pip install 'rightsize[otel]'"


def provider_from_environment(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider exporting where the `OTEL_*` variables say; None when none names an
    exporter (`OTEL_TRACES_EXPORTER`, or an OTLP endpoint) or `OTEL_SDK_DISABLED=true`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [
        n.strip().lower()
        for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names and "OTEL_TRACES_EXPORTER" not in environ and endpoint:
        names = ["otlp"]  # an endpoint alone means OTLP, the specification's default exporter
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT ask for traces, but the "
            f"OpenTelemetry SDK is not installed ({_EXTRA}): {exc}"
        ) from exc
    attributes = {"service.version": __version__}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "rightsize"
    # The SDK reads the sampler (OTEL_TRACES_SAMPLER), the resource and the batch limits
    # (OTEL_BSP_*) from the environment itself.
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter()
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
    except ImportError as exc:
        package = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else _EXTRA
        raise ConfigError(f"OTLP traces over {protocol} need {package}: {exc}") from exc
    raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf")


def step(
    name: str, describe: Callable[[Any], Mapping[str, Any]] | None = None
) -> Callable[
    [Callable[Concatenate[Gateway, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[Gateway, P], Coroutine[Any, Any, R]],
]:
    """Run an async pipeline step (its first argument the gateway) in a child span of the
    request; `describe` turns its result into the span's attributes."""

    def wrap(
        fn: Callable[Concatenate[Gateway, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[Gateway, P], Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def traced(gateway: Gateway, /, *args: P.args, **kwargs: P.kwargs) -> R:
            tracer = gateway.tracer
            if tracer is None:
                return await fn(gateway, *args, **kwargs)
            with tracer.start_as_current_span(name) as span:
                result = await fn(gateway, *args, **kwargs)
                if describe is not None:
                    span.set_attributes(_plain(describe(result)))
                return result

        return traced

    return wrap


@contextmanager
def child(
    tracer: Tracer | None, name: str, parent: Span | None = None, **attributes: Any
) -> Iterator[Span | None]:
    """A child span of the current one (or of `parent`); nothing at all when tracing is off."""
    if tracer is None:
        yield None
        return
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    with tracer.start_as_current_span(name, context=context, attributes=_plain(attributes)) as span:
        yield span


def attempt_span(tracer: Tracer | None, deployment: Deployment) -> Any:
    """An upstream call as the GenAI conventions describe a client inference span."""
    if tracer is None:
        return child(None, "")
    from opentelemetry.trace import SpanKind

    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": deployment.model.partition("/")[0]
        if "/" in deployment.model
        else "openai",
        "gen_ai.request.model": deployment.upstream_model,
        "rightsize.deployment": deployment.name,
        "server.address": deployment.api_base,
    }
    return tracer.start_as_current_span(
        f"chat {deployment.upstream_model}", kind=SpanKind.CLIENT, attributes=_plain(attributes)
    )


def describe_response(span: Span | None, result: Mapping[str, Any]) -> None:
    """The GenAI response attributes of a whole (not streamed) completion."""
    if span is None:
        return
    usage = result.get("usage") or {}
    reasons = [
        c.get("finish_reason") for c in result.get("choices") or () if c.get("finish_reason")
    ]
    span.set_attributes(
        _plain(
            {
                "gen_ai.response.id": result.get("id"),
                "gen_ai.response.model": result.get("model"),
                "gen_ai.response.finish_reasons": reasons or None,
                "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
                "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
            }
        )
    )


def describe_request(span: Span, record: SpendRecord) -> None:
    """The request span's summary, from its spend row: who, what was routed where, what it
    cost. Keys appear by id, never by secret."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(
        _plain(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": record.requested_model,
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.response.status_code": record.status,
                "rightsize.request_id": record.request_id,
                "rightsize.team": record.team,
                "rightsize.key_id": record.key_id,
                "rightsize.deployment": record.deployment,
                "rightsize.tier": record.tier,
                "rightsize.route_reason": record.route_reason,
                "rightsize.reasoning_demand": record.reasoning_demand,
                "rightsize.cache_hit": record.cache_hit,
                "rightsize.attempts": record.attempts,
                "rightsize.cost_usd": None
                if record.cost_usd is None
                else format(record.cost_usd.normalize(), "f"),
                "error.type": record.error_type if record.status >= 400 else None,
            }
        )
    )
    if record.status >= 500:
        span.set_status(Status(StatusCode.ERROR, record.error_type or str(record.status)))


def _plain(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int, float and their sequences; None means absent."""
    plain: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            plain[key] = value
        elif isinstance(value, (list, tuple)):
            plain[key] = [str(v) for v in value]
        else:
            plain[key] = float(value) if hasattr(value, "__float__") else str(value)
    return plain
