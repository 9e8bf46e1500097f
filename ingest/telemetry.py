"""Traces (OpenTelemetry) and metrics (Prometheus) of the serve loop.

Each frame gets a ``"<topic> process"`` CONSUMER span, parented by the frame's W3C
``traceparent`` header, with messaging semantic-convention attributes and children
``consume``, ``decode``, ``infer``, ``score``, ``publish`` (batch stages appear in every frame's
trace with the batch's timing). Results and alarms carry the process span's ``traceparent``
so a downstream consumer continues the trace. Traces export over OTLP/HTTP when an endpoint
is configured (or to any exporter a test passes in); metrics are served by the Prometheus
client's HTTP server on ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingest.settings import TelemetrySettings

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class PipelineMetrics:
    """The Prometheus metrics of one serve loop (in their own registry)."""

    registry: CollectorRegistry
    frames_in: Counter
    frames_out: Counter
    frames_failed: Counter
    alarms: Counter
    batch_size: Histogram
    e2e_latency: Histogram
    stage_seconds: Histogram
    in_flight: Gauge
    paused_partitions: Gauge
    retries: Counter
    commits: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> PipelineMetrics:
        """Register every metric in ``registry`` (a fresh one by default)."""
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            frames_in=Counter(
                "adqc_frames_in", "Frames consumed from Kafka", ["topic"], registry=reg
            ),
            frames_out=Counter(
                "adqc_frames_out",
                "Frames answered with an acknowledged result",
                ["decision"],
                registry=reg,
            ),
            frames_failed=Counter(
                "adqc_frames_failed",
                "Frames sent to the dead-letter topic",
                ["reason"],
                registry=reg,
            ),
            alarms=Counter("adqc_alarms", "Alarms published", ["severity"], registry=reg),
            batch_size=Histogram(
                "adqc_batch_size", "Frames per engine batch", buckets=BATCH_BUCKETS, registry=reg
            ),
            e2e_latency=Histogram(
                "adqc_e2e_latency_seconds",
                "Capture time to acknowledged result",
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            stage_seconds=Histogram(
                "adqc_stage_seconds",
                "Time per pipeline stage (decode per frame; infer/score/publish per batch)",
                ["stage"],
                buckets=STAGE_BUCKETS,
                registry=reg,
            ),
            in_flight=Gauge(
                "adqc_in_flight_frames", "Frames held between poll and commit", registry=reg
            ),
            paused_partitions=Gauge(
                "adqc_paused_partitions", "Partitions paused by back-pressure", registry=reg
            ),
            retries=Counter(
                "adqc_retries", "Retries after transient failures", ["cause"], registry=reg
            ),
            commits=Counter("adqc_offset_commits", "Offset commits", registry=reg),
        )


class Telemetry:
    """Tracer + metrics for the serve loop.

    Args:
        settings: service name, OTLP endpoint, Prometheus port.
        span_exporter: export spans here (tests pass an in-memory exporter; exported
            synchronously). Default: OTLP/HTTP when ``settings.otlp_endpoint`` is set, else none.
        registry: Prometheus registry (a fresh one by default).
    """

    def __init__(
        self,
        settings: TelemetrySettings,
        span_exporter: SpanExporter | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name})
        )
        if span_exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        elif settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
            )
        self.tracer = self.provider.get_tracer("adqc.ingest")
        self.metrics = PipelineMetrics.create(registry)
        self._http = None
        self.metrics_port: int | None = None

    def start_metrics_server(self) -> int | None:
        """Serve ``/metrics``; returns the bound port (None when disabled)."""
        port = self.settings.prometheus_port
        if port is None:
            return None
        server, _thread = start_http_server(
            port, addr=self.settings.prometheus_addr, registry=self.metrics.registry
        )
        self._http = server
        self.metrics_port = server.server_address[1]
        log.info("Prometheus metrics on http://%s:%d/metrics", *server.server_address[:2])
        return self.metrics_port

    def shutdown(self) -> None:
        """Flush spans and stop the metrics server."""
        self.provider.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # --- spans -----------------------------------------------------------------------------

    def start_process_span(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        group: str,
        key: bytes | None,
        headers: Mapping[str, str],
        start_ns: int,
    ) -> Span:
        """The frame's ``"<topic> process"`` span, child of its ``traceparent`` (if any)."""
        carrier = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
        parent = _PROPAGATOR.extract(carrier) if carrier else otel_context.Context()
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": group,
        }
        if key is not None:
            attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
        if headers.get("frame_id"):
            attributes["messaging.message.id"] = headers["frame_id"]
        if headers.get("product"):
            attributes["adqc.product"] = headers["product"]
        return self.tracer.start_span(
            f"{topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            start_time=start_ns,
        )

    def child_span(
        self,
        parent: Span,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, object] | None = None,
        links: Sequence[Link] = (),
        error: str | None = None,
    ) -> None:
        """Record a finished child span of ``parent`` with explicit timestamps."""
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes=dict(attributes or {}),
            links=list(links),
            start_time=start_ns,
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)


def traceparent_of(span: Span) -> dict[str, str]:
    """W3C trace-context headers (``traceparent``, maybe ``tracestate``) for ``span``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def trace_id_of(span: Span) -> str | None:
    """The 32-hex trace id of ``span`` (None for a non-recording invalid span)."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
