"""OpenTelemetry tracing for the processes around ``adqc serve`` (camera simulator, tools).

``adqc serve`` has its own tracer in :mod:`ingest.telemetry`; this module gives the other
entry points a tracer that exports over OTLP/HTTP, so one frame's trace runs from the camera's
``"<topic> publish"`` PRODUCER span through serve's ``"<topic> process"`` span and its children.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span


def tracer_provider(
    service_name: str, otlp_endpoint: str | None = None, exporter: SpanExporter | None = None
) -> TracerProvider:
    """A provider for ``service_name`` exporting to ``exporter`` or OTLP/HTTP ``otlp_endpoint``
    (e.g. ``http://127.0.0.1:4318/v1/traces``); with neither, spans are made but not exported.
    Call ``shutdown()`` at exit: it flushes the spans still queued."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` header value that makes ``span`` the parent of the receiver."""
    ctx = span.get_span_context()
    flags = int(ctx.trace_flags) & 0xFF
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"
