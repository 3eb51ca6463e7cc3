"""OpenTelemetry traces, opt-in through the standard OTEL_* variables.

One SERVER span per request with child spans for the cache lookup, the estimate, the decision,
the budget hold, each upstream attempt (a GenAI CLIENT span) and the settlement. Off (the
default), no OpenTelemetry module is imported and each step costs one attribute check: the
pipeline's spans are a shared no-op object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from gateway.settings import ConfigError
from gateway.store import SpendRecord

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_EXTRA = "pip install 'rightsize-gateway[otel]'"


class NoSpan(AbstractContextManager["NoSpan"]):
    """Stands in for a span when tracing is off: every method does nothing."""

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN = NoSpan()  # stateless, shared by every request while tracing is off


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """On when an OTLP endpoint or a traces exporter other than `none` is named, unless
    OTEL_SDK_DISABLED=true; off by default."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name) for name in _ENDPOINTS)


class Tracing:
    """The tracer of one app and the settings its spans follow."""

    def __init__(self, provider: Any, *, record_prompts: bool = False) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("rightsize.gateway")
        self.record_prompts = record_prompts
        self._kinds = SpanKind
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, record_prompts: bool) -> Tracing | None:
        """A tracer exporting as the OTEL_* variables say, or None when they do not ask."""
        if not tracing_enabled(environ):
            return None
        try:
            from opentelemetry.sdk.resources import OTELResourceDetector, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError(f"OTEL_* variables ask for traces: {_EXTRA}") from None
        name = environ.get("OTEL_SERVICE_NAME") or "rightsize"
        resource = Resource.create({"service.name": name}).merge(OTELResourceDetector().detect())
        provider = TracerProvider(resource=resource)
        for exporter in _exporters(environ):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, record_prompts=record_prompts)

    def start(self, request_id: str, headers: Mapping[str, str]) -> RequestTrace:
        """The request's root span, a child of the caller's `traceparent` when it sends one."""
        parent = self._propagator.extract(dict(headers))
        root = self.tracer.start_span(
            "rightsize.request",
            context=parent,
            kind=self._kinds.SERVER,
            attributes={"rightsize.request_id": request_id, "gen_ai.operation.name": "chat"},
        )
        return RequestTrace(self, root)

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """One request's root span and the children the pipeline opens under it."""

    def __init__(self, tracing: Tracing, root: Any) -> None:
        from opentelemetry.trace import set_span_in_context

        self.tracing = tracing
        self.root = root
        self._context = set_span_in_context(root)

    def child(self, name: str, *, client: bool = False) -> AbstractContextManager[Any]:
        kinds = self.tracing._kinds
        child = self.tracing.tracer.start_span(
            name, context=self._context, kind=kinds.CLIENT if client else kinds.INTERNAL
        )
        return _Ended(child)

    def prompt(self, messages: list[dict[str, Any]]) -> None:
        """The prompt on the root span, only where server.trace_prompts allows it."""
        if self.tracing.record_prompts:
            self.root.set_attribute("gen_ai.input.messages", json.dumps(messages, default=str))

    def end(self, record: SpendRecord, cache: str | None) -> None:
        """Close the root span with what the spend log says about the request."""
        from opentelemetry.trace import Status, StatusCode

        root = self.root
        root.set_attributes(root_attributes(record, cache))
        if record.status >= 500:
            root.set_status(Status(StatusCode.ERROR, record.error_type or str(record.status)))
        root.end()


class _Ended(AbstractContextManager[Any]):
    """A child span, ended on exit, a failure recorded on it. Not made the current span: the
    pipeline parents its spans explicitly, and attaching a context costs a third of a span."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is not None and isinstance(exc, Exception):
            from opentelemetry.trace import Status, StatusCode

            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.span.end()


def root_attributes(record: SpendRecord, cache: str | None) -> dict[str, Any]:
    """The request's attributes: GenAI semantic conventions where they have a name,
    rightsize.* for the rest. No prompt text, no key secret."""
    attributes: dict[str, Any] = {
        "http.response.status_code": record.status,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "rightsize.cost_usd": str(record.cost_usd),
        "rightsize.attempts": record.attempts,
        "rightsize.stream": record.stream,
    }
    optional = {
        "gen_ai.request.model": record.requested_model,
        "gen_ai.response.model": record.deployment,
        "rightsize.team": record.team,
        "rightsize.key_id": record.key_id,
        "rightsize.tier": record.tier,
        "rightsize.deployment": record.deployment,
        "rightsize.cache": cache,
        "rightsize.route_reason": record.route_reason,
        "rightsize.reasoning_demand": record.reasoning_demand,
        "error.type": record.error_type,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    names = [
        n.strip().lower()
        for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if n.strip()
    ]
    exporters: list[Any] = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Rightsize exports traces over "
                    "http/protobuf only"
                )
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                raise ConfigError(f"OTEL_TRACES_EXPORTER=otlp: {_EXTRA}") from None
            exporters.append(OTLPSpanExporter())  # endpoint, headers: from OTEL_* itself
        elif name != "none":
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r}: Rightsize knows otlp, console and none"
            )
    return exporters
