"""Traces (OpenTelemetry) and metrics (Prometheus) of the serve loop.

Each frame gets a ``"<topic> process"`` CONSUMER span, parented by the frame's W3C
``traceparent`` header, with messaging semantic-convention attributes and children
``consume``, ``decode``, ``infer``, ``score``, ``publish`` (batch stages appear in every frame's
trace with the batch's timing). Results and alarms carry the process span's ``traceparent``
so a downstream consumer continues the trace. Traces export over OTLP/HTTP when an endpoint
is configured (or to any exporter a test passes in); metrics are served by the Prometheus
client's WSGI app on ``/metrics``, next to ``/healthz`` (the loop's heartbeat, for a
liveness probe that fails when the loop stalls, not only when the process is gone).

Frame, alarm and latency metrics carry ``product``, ``line`` and ``camera`` labels. Their
cardinality is bounded: each label keeps at most ``max_products`` / ``max_lines`` /
``max_cameras`` distinct values (first come, first kept); later values are counted as
``"other"`` (see docs/OPERATIONS.md, "Metrics").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from ingest.settings import TelemetrySettings

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: score / threshold: 1.0 is the decision boundary (above it a frame alarms)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
OTHER = "other"
UNKNOWN = "unknown"
MAX_LABEL_LENGTH = 64
FRAME_LABELS = ("product", "line", "camera")


class LabelLimiter:
    """Bounded label values: at most ``limits[name]`` distinct values per label name.

    The first values seen keep their own label; any later one becomes ``"other"``. Empty or
    missing values are ``"unknown"``; values are cut at 64 characters. Thread-safe.
    """

    def __init__(self, limits: Mapping[str, int]) -> None:
        self.limits = dict(limits)
        self._seen: dict[str, set[str]] = {name: set() for name in limits}
        self._lock = threading.Lock()

    def __call__(self, name: str, value: str | None, register: bool = True) -> str:
        """The label value to use for ``value`` of label ``name``; with ``register=False`` a
        value not seen before is ``"other"`` without taking one of the label's slots."""
        text = (value or "").strip()[:MAX_LABEL_LENGTH] or UNKNOWN
        with self._lock:
            seen = self._seen[name]
            if text in seen:
                return text
            if register and len(seen) < self.limits[name]:
                seen.add(text)
                return text
        return OTHER

    def frame(self, product: str | None, line: str | None, camera: str | None) -> dict[str, str]:
        """``{"product": ..., "line": ..., "camera": ...}`` bounded label values."""
        return {
            "product": self("product", product),
            "line": self("line", line),
            "camera": self("camera", camera),
        }


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
    score_ratio: Histogram
    alarm_rate: Gauge
    alarm_rate_target: Gauge
    consumer_lag: Gauge
    assigned_partitions: Gauge
    heartbeat: Gauge

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
                ["decision", *FRAME_LABELS],
                registry=reg,
            ),
            frames_failed=Counter(
                "adqc_frames_failed",
                "Frames sent to the dead-letter topic",
                ["reason", "product"],
                registry=reg,
            ),
            alarms=Counter(
                "adqc_alarms", "Alarms published", ["severity", *FRAME_LABELS], registry=reg
            ),
            batch_size=Histogram(
                "adqc_batch_size", "Frames per engine batch", buckets=BATCH_BUCKETS, registry=reg
            ),
            e2e_latency=Histogram(
                "adqc_e2e_latency_seconds",
                "Capture time to acknowledged result",
                FRAME_LABELS,
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
            score_ratio=Histogram(
                "adqc_score_ratio",
                "Anomaly score / the product's threshold (above 1.0 the frame alarms)",
                ["product"],
                buckets=RATIO_BUCKETS,
                registry=reg,
            ),
            alarm_rate=Gauge(
                "adqc_alarm_rate",
                "Share of the product's last alarm_rate_window frames that alarmed",
                ["product"],
                registry=reg,
            ),
            alarm_rate_target=Gauge(
                "adqc_alarm_rate_target",
                "The product's calibrated false-alarm rate on good parts (target_far)",
                ["product"],
                registry=reg,
            ),
            consumer_lag=Gauge(
                "adqc_consumer_lag",
                "Records of an assigned partition not yet polled (end offset - position)",
                ["topic", "partition"],
                registry=reg,
            ),
            assigned_partitions=Gauge(
                "adqc_assigned_partitions", "Partitions assigned to this worker", registry=reg
            ),
            heartbeat=Gauge(
                "adqc_loop_heartbeat_timestamp_seconds",
                "Unix time of the serve loop's last iteration",
                registry=reg,
            ),
        )

    def series_names(self) -> set[str]:
        """Every series name this registry can expose (``_total``, ``_bucket``, ... included)."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",),
        }
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
        return names


class _AlarmWindow:
    """The alarm share of the last ``size`` frames of one product."""

    def __init__(self, size: int) -> None:
        self.decisions: deque[bool] = deque(maxlen=size)
        self.alarms = 0

    def add(self, alarmed: bool) -> float:
        if len(self.decisions) == self.decisions.maxlen and self.decisions[0]:
            self.alarms -= 1
        self.decisions.append(alarmed)
        self.alarms += alarmed
        return self.alarms / len(self.decisions)


def _partition_key(tp: Any) -> tuple[str, int]:
    if isinstance(tp, tuple):
        return str(tp[0]), int(tp[1])
    return str(tp.topic), int(tp.partition)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Probes and scrapes every few seconds: no access log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


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
        self.labels = LabelLimiter(
            {
                "product": settings.max_products,
                "line": settings.max_lines,
                "camera": settings.max_cameras,
            }
        )
        self._windows: dict[str, _AlarmWindow] = {}
        self._lag_series: set[tuple[str, int]] = set()
        self._beat: float | None = None  # time.monotonic() of the last heartbeat
        self._assigned = 0
        self._http: WSGIServer | None = None
        self.metrics_port: int | None = None

    def start_metrics_server(self) -> int | None:
        """Serve ``/metrics`` and ``/healthz``; returns the bound port (None when disabled)."""
        port = self.settings.prometheus_port
        if port is None:
            return None
        server = make_server(
            self.settings.prometheus_addr,
            port,
            self.wsgi_app(),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        threading.Thread(target=server.serve_forever, name="adqc-metrics", daemon=True).start()
        self._http = server
        self.metrics_port = server.server_address[1]
        log.info("Prometheus metrics on http://%s:%d/metrics", *server.server_address[:2])
        return self.metrics_port

    def wsgi_app(self) -> Any:
        """WSGI app: ``/healthz`` (JSON, 200 or 503), anything else the Prometheus exposition."""
        metrics_app = make_wsgi_app(self.metrics.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                healthy, body = self.health()
                status = "200 OK" if healthy else "503 Service Unavailable"
                start_response(status, [("Content-Type", "application/json")])
                return [json.dumps(body).encode()]
            return metrics_app(environ, start_response)

        return app

    # --- liveness --------------------------------------------------------------------------

    def heartbeat(self, assigned: int) -> None:
        """Called by the serve loop on every iteration with its number of assigned partitions."""
        self._beat = time.monotonic()
        self._assigned = assigned
        self.metrics.heartbeat.set(time.time())
        self.metrics.assigned_partitions.set(assigned)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``: unhealthy when partitions are assigned and the last
        heartbeat is older than ``stall_after_s`` (before the first heartbeat: starting)."""
        if self._beat is None:
            return True, {"status": "starting"}
        age = time.monotonic() - self._beat
        body = {
            "heartbeat_age_s": round(age, 3),
            "assigned_partitions": self._assigned,
            "stall_after_s": self.settings.stall_after_s,
        }
        if self._assigned > 0 and age > self.settings.stall_after_s:
            return False, {"status": "stalled", **body}
        return True, {"status": "ok", **body}

    # --- per-frame metrics -----------------------------------------------------------------

    def observe_result(
        self,
        *,
        product: str,
        line: str,
        camera: str,
        decision: str,
        score: float,
        threshold: float,
        latency_s: float,
        target_far: float | None = None,
    ) -> None:
        """An acknowledged result: frame count, latency, score ratio, alarm rate and target."""
        labels = self.labels.frame(product, line, camera)
        m = self.metrics
        m.frames_out.labels(decision=decision, **labels).inc()
        m.e2e_latency.labels(**labels).observe(max(latency_s, 0.0))
        p = labels["product"]
        if threshold > 0:
            m.score_ratio.labels(product=p).observe(score / threshold)
        window = self._windows.get(p)
        if window is None:
            window = self._windows[p] = _AlarmWindow(self.settings.alarm_rate_window)
        m.alarm_rate.labels(product=p).set(window.add(decision == "defect"))
        if target_far is not None:
            m.alarm_rate_target.labels(product=p).set(target_far)

    def observe_alarm(self, *, product: str, line: str, camera: str, severity: str) -> None:
        """An acknowledged alarm."""
        self.metrics.alarms.labels(
            severity=severity, **self.labels.frame(product, line, camera)
        ).inc()

    def observe_failure(self, reason: str, product: str | None) -> None:
        """A frame dead-lettered for ``reason`` (``product`` None when its headers were bad).

        Dead-lettered frames never claim a product label (a gateway sending random product
        names would otherwise fill the cap): a product not yet seen in a result is ``"other"``.
        """
        label = UNKNOWN if not product else self.labels("product", product, register=False)
        self.metrics.frames_failed.labels(reason=reason, product=label).inc()

    def set_consumer_lag(
        self, end_offsets: Mapping[Any, int], positions: Mapping[Any, int]
    ) -> None:
        """Lag per assigned partition = end offset - position (never below 0).

        Keys are ``TopicPartition`` objects or ``(topic, partition)`` tuples; partitions with
        a position but no end offset are skipped. Partitions no longer passed in (revoked)
        lose their series.
        """
        ends = {_partition_key(tp): int(v) for tp, v in end_offsets.items() if v is not None}
        current: set[tuple[str, int]] = set()
        for tp, position in positions.items():
            key = _partition_key(tp)
            if key not in ends or position is None:
                continue
            current.add(key)
            lag = max(ends[key] - int(position), 0)
            self.metrics.consumer_lag.labels(topic=key[0], partition=str(key[1])).set(lag)
        for topic, partition in self._lag_series - current:
            self.metrics.consumer_lag.remove(topic, str(partition))
        self._lag_series = current

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
