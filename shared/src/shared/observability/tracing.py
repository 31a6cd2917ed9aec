"""OpenTelemetry: one tracer provider per process exporting OTLP/HTTP to Jaeger, with the
correlation id stamped on every span.

Asynchronous hops keep one trace: the outbox stores the W3C ``traceparent`` of the span that
wrote the event, the relay's publish span is its child and injects its own context into the
Kafka headers, and each consumer's processing span is a child of that. Parent-child (rather
than span links) is chosen so Jaeger draws the saga as one tree: the request, every publish
and every reaction, across the three services.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.observability.correlation import correlation_id_var
from shared.service.settings import ServiceSettings

TRACER_NAME = "order-fulfillment"


class CorrelationIdSpanProcessor(SpanProcessor):
    """Puts the correlation id in effect on every span, so Jaeger finds a whole flow with
    ``tag=correlation_id:<id>``."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if (correlation_id := correlation_id_var.get()) is not None:
            span.set_attribute("correlation_id", correlation_id)


def setup_tracing(settings: ServiceSettings) -> TracerProvider:
    provider = new_tracer_provider(settings)
    trace.set_tracer_provider(provider)
    return provider


def new_tracer_provider(settings: ServiceSettings) -> TracerProvider:
    """Every trace sampled unless ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` say
    otherwise (the SDK reads them); exported to Jaeger unless ``OTEL_SDK_DISABLED``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{settings.service_name}-service"})
    )
    provider.add_span_processor(CorrelationIdSpanProcessor())
    if not settings.otel_sdk_disabled:
        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5))
        )
    return provider


@functools.cache
def tracer() -> trace.Tracer:
    """The suite's tracer, made once (``get_tracer`` builds a new one on every call, and a span
    per event made that show in the profiles). Made before ``setup_tracing``, it is a proxy
    that follows the provider set later."""
    return trace.get_tracer(TRACER_NAME)


def context_from_headers(headers: Mapping[str, str]) -> Context:
    return propagate.extract(dict(headers))


def attach(ctx: Context) -> object:
    return context.attach(ctx)


def detach(token: object) -> None:
    context.detach(token)  # type: ignore[arg-type]
