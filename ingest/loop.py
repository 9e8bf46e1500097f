"""The serve loop, a Kafka state machine: poll, decode, batch, score, publish, ack, commit.

One main thread owns the Kafka consumer (poll, pause/resume, commit); a small thread pool
decodes frames; one inference thread runs the scorer on batches while the main thread keeps
polling, decoding and publishing (so decoding and publishing overlap inference).

Guarantees:

- **at-least-once**: a frame's offset is committed only after its result (and alarm) or its
  DLQ record is acknowledged by the broker (``acks=all``, idempotent producer); commits cover
  only the finished prefix of each partition, so a crash re-delivers unfinished frames.
- **per-partition order**: batches are contiguous runs of the poll order and results are
  published in that order (a batch mixing products is scored per product, then re-ordered).
- **malformed frames** (missing/invalid headers, undecodable image, wrong size, unknown
  product, record of another model) go to the DLQ with a reason and are committed.
- **back-pressure**: at most ``batch.max_in_flight`` frames are held; beyond that the
  partitions are paused (and resumed below half), instead of growing a queue.
- **transient outages** (a :class:`~inference.errors.TransientError`: store or engine
  unreachable): the batch is retried with exponential back-off (``inference.errors.retrying``),
  forever, and nothing is committed meanwhile; any other error DLQs the frame. Failed
  publishes are resent with the same back-off.
- **refused credentials** mid-run (:class:`~inference.store.StoreAuthError`: the Redis
  password rotated or the ACL changed while serving): not a bad frame and not an outage. The
  loop commits only what was already acknowledged and raises it; the batch's frames stay
  uncommitted (no DLQ record) and ``adqc serve`` exits with ``EXIT_CREDENTIALS`` (3).
- **stop** (:func:`ingest.runtime.serve` calls it on SIGTERM/SIGINT): stop polling, finish
  the batches in flight, publish, commit, close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, RetriableError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import TopicPartition
from opentelemetry.trace import Span, Status, StatusCode
from tenacity import RetryCallState

from inference.errors import Backoff, TransientError, retrying
from inference.results import ScoreResult
from inference.store.base import StoreAuthError
from ingest.consumer import OffsetTracker, commit_map, create_consumer
from ingest.decode import decode_sized
from ingest.messages import (
    DlqRecord,
    build_alarm,
    build_dlq_record,
    build_heatmap,
    build_result,
    frame_timings,
    metadata_only,
)
from ingest.publisher import Publisher, unsendable
from ingest.schemas import (
    AlarmMessage,
    DlqReason,
    FrameHeaders,
    MessageError,
    ResultMessage,
    Source,
    utc_now,
)
from ingest.settings import ServeSettings
from ingest.telemetry import Telemetry, trace_id_of, traceparent_of

log = logging.getLogger("adqc.serve")

COMMIT_INTERVAL_S = 0.2
INFERENCE_QUEUE_DEPTH = 2  # batches handed to the inference thread ahead of time
BUSY_POLL_S = 0.01  # while busy, look at Kafka at least this often
PAUSED_POLL_S = 0.1  # while paused, poll this often (keeps rebalances and the group moving)
LAG_INTERVAL_S = 5.0  # how often the consumer-lag gauges are refreshed


class ScorerLike(Protocol):
    """What the loop needs from :class:`inference.scorer.Scorer`."""

    def score(self, images: list[np.ndarray], product: str) -> list[ScoreResult]: ...


class Aborted(RuntimeError):
    """The loop is shutting down and gave up on a batch (it stays uncommitted)."""


class BrokerUnavailableError(TransientError):
    """Kafka was unreachable when the loop started (retried by :func:`ingest.runtime.serve`)."""


def _broker(what: str, fn: Callable[[], Any]) -> Any:
    """Run a Kafka client call, turning "broker not reachable" into BrokerUnavailableError."""
    try:
        return fn()
    except (RetriableError, ConnectionError, TimeoutError) as exc:
        raise BrokerUnavailableError(f"Kafka unreachable ({what}): {exc}") from exc


# --- per-frame state ---------------------------------------------------------------------------


@dataclass(eq=False)
class Work:
    """One polled frame on its way through the loop."""

    record: Any  # kafka ConsumerRecord
    tp: TopicPartition
    received_ns: int
    span: Span
    decoded: Future | None = None
    frame: FrameHeaders | None = None
    image: np.ndarray | None = None  # decoded, downscaled to limits.decode_max_side
    frame_shape: tuple[int, int] = (0, 0)  # the frame's full (H, W)
    error: MessageError | None = None
    decode_start_ns: int = 0
    decode_end_ns: int = 0
    lost: bool = False  # its partition was revoked: never published or committed by us

    @property
    def source(self) -> Source:
        return Source(
            topic=self.record.topic, partition=self.record.partition, offset=self.record.offset
        )


@dataclass
class Scored:
    """A frame's outputs, built on the inference thread."""

    work: Work
    result: ResultMessage | None = None
    alarm: AlarmMessage | None = None
    error: MessageError | None = None
    raw: ScoreResult | None = None  # the scorer's result, until the messages are built
    target_far: float | None = None  # the product's calibrated false-alarm rate


@dataclass
class BatchOutcome:
    """What the inference thread returns for a batch (in the batch's order)."""

    items: list[Scored]
    start_ns: int
    features_end_ns: int
    end_ns: int
    built_ns: int = 0


@dataclass
class Send:
    """One record on its way to the broker: how to (re)send it, its future, and smaller
    replacements to send instead when the broker can never take it (too large)."""

    make: Callable[[], Any]
    future: Any
    fallbacks: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)


@dataclass
class Outbox:
    """Sends of a group of frames awaiting broker acknowledgement."""

    works: list[Work]
    sends: list[Send]
    sent_ns: int
    outcome: BatchOutcome | None = None
    scored: list[Scored] = field(default_factory=list)
    dlq_reasons: dict[int, str] = field(default_factory=dict)  # id(work) -> reason
    acked_ns: int = 0
    attempts: int = 1

    def done(self) -> bool:
        return all(s.future.is_done for s in self.sends)

    def failed(self) -> list[int]:
        return [
            i
            for i, s in enumerate(self.sends)
            if s.future.is_done and s.future.exception is not None
        ]


# --- the loop ----------------------------------------------------------------------------------


class ServeLoop:
    """Consume frames, score them in batches, publish results/alarms/DLQ, commit.

    Args:
        settings: validated serve settings.
        scorer: the scorer (``Scorer(engine, store)``).
        telemetry: tracer + metrics.
        consumer_factory: builds the Kafka consumer given the rebalance listener
            (default: :func:`ingest.consumer.create_consumer`).
        publisher: the producer wrapper (default: a new :class:`Publisher`).
    """

    def __init__(
        self,
        settings: ServeSettings,
        scorer: ScorerLike,
        telemetry: Telemetry,
        consumer_factory: Callable[[ConsumerRebalanceListener], Any] | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.telemetry = telemetry
        self.metrics = telemetry.metrics
        self._consumer_factory = consumer_factory or (
            lambda listener: create_consumer(settings, listener)
        )
        self.publisher = publisher or _broker(
            "producer", lambda: Publisher(settings.kafka, settings.topics)
        )
        self.consumer: Any = None
        self.tracker = OffsetTracker()
        self._pending: deque[Work] = deque()  # polled, decoding (poll order)
        self._ready: deque[Work] = deque()  # decoded and valid, not yet batched
        self._batches: deque[tuple[list[Work], Future]] = deque()
        self._building: deque[tuple[list[Work], Future]] = deque()  # messages being built
        self._outboxes: deque[Outbox] = deque()
        self._decoder = ThreadPoolExecutor(settings.batch.decode_workers, "adqc-decode")
        self._inference = ThreadPoolExecutor(1, "adqc-infer")
        self._post = ThreadPoolExecutor(1, "adqc-post")
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._paused = False
        self._last_commit = 0.0
        self._last_poll = 0.0
        self._last_lag = 0.0
        self._wake = threading.Event()  # set when a decode, a batch or a publish completes
        # Rebalance events recorded by the listener (any thread); applied by the main thread.
        self._revocations: deque[set[TopicPartition]] = deque()
        self._rewind: set[TopicPartition] = set()  # revoked; rewind to the commit if ours again
        self._backoff = Backoff(settings.retry.initial_backoff_s, settings.retry.max_backoff_s)
        self._decoded_lock = threading.Lock()
        self._decoded_bytes = 0  # decoded pixels held by frames in flight
        self.running = threading.Event()
        self.stats = {"frames": 0, "results": 0, "alarms": 0, "dlq": 0, "commits": 0}

    # -- control --

    def stop(self) -> None:
        """Ask the loop to drain and exit (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(self) -> None:
        """Run until :meth:`stop`; then drain, commit and close."""
        try:
            self.consumer = _broker("consumer", lambda: self._consumer_factory(_Listener(self)))
            log.info(
                "serving %s -> %s / %s (group %s, batch %d, max wait %d ms)",
                self.settings.topics.frames,
                self.settings.topics.results,
                self.settings.topics.alarms,
                self.settings.group,
                self.settings.batch.size,
                self.settings.batch.max_wait_ms,
            )
            self.running.set()
            try:
                while not self._stop.is_set():
                    self._step()
            except StoreAuthError:
                self._stop_refused()
                raise
            self._drain()
        finally:
            self._close()

    def _stop_refused(self) -> None:
        """The store refused our credentials: commit what the broker already acknowledged
        (the finished prefix of each partition, never the refused batch) and give up on the
        rest, which the next worker re-reads."""
        self._abort.set()  # no waiting: resends and retries give up at once
        try:
            self._collect_acks()
            self._commit(force=True)
        except Exception as exc:  # the refusal is what matters; this is best effort
            log.warning("final commit after the credentials refusal failed: %s", exc)
        held = self.tracker.in_flight()
        log.info("%d frame(s) in flight stay uncommitted (re-read after a restart)", held)

    # -- one iteration --

    def _step(self) -> None:
        if not (self._pending or self._ready or self._batches or self._building or self._outboxes):
            self._poll(100)  # idle: poll() returns as soon as a frame arrives
        else:
            # Busy: take what the fetcher has buffered (without blocking), then sleep until a
            # decode, batch or publish completes, a batch deadline passes, or it is time to
            # look at Kafka again. Polling in a tight loop would steal CPU from the engine.
            if not self._paused or time.monotonic() - self._last_poll >= PAUSED_POLL_S:
                self._poll(0)
            self._wake.wait(self._wait_s())
            self._wake.clear()
        self._take_decoded()
        self._dispatch()
        self._collect_inference()
        self._collect_built()
        self._collect_acks()
        self._commit()
        self._backpressure()
        self._report_health()

    def _report_health(self) -> None:
        """Heartbeat for /healthz; consumer lag every LAG_INTERVAL_S (from cached watermarks)."""
        assigned = self.consumer.assignment()
        self.telemetry.heartbeat(len(assigned))
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL_S:
            return
        self._last_lag = now
        ends = {tp: self.consumer.highwater(tp) for tp in assigned}
        # position() answers from memory once a fetch has set the high watermark
        positions = {tp: self.consumer.position(tp) for tp, end in ends.items() if end is not None}
        self.telemetry.set_consumer_lag(ends, positions)

    def _wait_s(self) -> float:
        wait = PAUSED_POLL_S if self._paused else BUSY_POLL_S
        if self._ready and len(self._batches) < INFERENCE_QUEUE_DEPTH:
            deadline_ns = self._ready[0].received_ns + self.settings.batch.max_wait_ms * 1_000_000
            wait = min(wait, max(0.0, (deadline_ns - time.time_ns()) / 1e9))
        return wait

    def _wakeup(self, *_: Any) -> None:
        self._wake.set()

    def _poll(self, timeout_ms: int) -> None:
        capacity = self.settings.batch.max_in_flight - self.tracker.in_flight()
        if self._over_budget():
            capacity = 0
        if capacity <= 0 and not self._paused:
            self._paused = True
        if self._paused:
            self._pause_assigned()  # polling paused partitions keeps the membership alive
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max(1, capacity))
        self._last_poll = time.monotonic()
        # A rebalance runs on kafka-python's IO thread, concurrently with this thread: records of
        # this poll may have been fetched before it. Apply revocations first, then rewind every
        # partition that was revoked and is ours again to its committed offset, dropping what
        # was fetched for it (else a stale fetch could start the partition past frames that
        # were dropped as lost, and the commit would skip them).
        self._apply_revocations()
        skip = self._rewind | self._rewind_reassigned()
        now = time.time_ns()
        for tp, records in polled.items():
            if tp in skip:
                continue  # fetched before the rebalance: re-read from the commit
            for record in records:
                self._accept(tp, record, now)

    def _accept(self, tp: TopicPartition, record: Any, now: int) -> None:
        headers = {}
        for name, value in record.headers or ():
            try:
                headers[name] = (value or b"").decode("utf-8")
            except UnicodeDecodeError:
                headers[name] = ""
        span = self.telemetry.start_process_span(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=self.settings.group,
            key=record.key,
            headers=headers,
            start_ns=now,
        )
        work = Work(record=record, tp=tp, received_ns=now, span=span)
        self.tracker.add(tp, record.offset)
        work.decoded = self._decoder.submit(self._decode_job, work)
        work.decoded.add_done_callback(self._wakeup)
        self._pending.append(work)
        self.stats["frames"] += 1
        self.metrics.frames_in.labels(topic=record.topic).inc()

    def _decode_job(self, work: Work) -> None:
        work.decode_start_ns = time.time_ns()
        try:
            frame = FrameHeaders.from_kafka(work.record.headers)
            work.frame = frame
            _check_product(frame.product)
            limits = self.settings.limits
            image, work.frame_shape = decode_sized(
                work.record.value, frame, limits, limits.decode_max_side
            )
            work.image = image
            with self._decoded_lock:
                self._decoded_bytes += image.nbytes
            if work.lost:  # revoked while decoding: nobody will batch it
                self._release(work)
        except MessageError as exc:
            work.error = exc
        except Exception as exc:  # a decoder bug must not stop the loop: DLQ it
            log.exception("decoding offset %s failed", work.record.offset)
            work.error = MessageError(DlqReason.UNDECODABLE_IMAGE, f"{type(exc).__name__}: {exc}")
        work.decode_end_ns = time.time_ns()
        self.metrics.stage_seconds.labels(stage="decode").observe(
            (work.decode_end_ns - work.decode_start_ns) / 1e9
        )

    def _release(self, work: Work) -> None:
        """Drop a frame's decoded pixels (once its messages are built or it is dropped)."""
        image, work.image = work.image, None
        if image is not None:
            with self._decoded_lock:
                self._decoded_bytes -= image.nbytes

    def _over_budget(self) -> bool:
        return self._decoded_bytes >= self.settings.batch.max_decoded_mib * 1024 * 1024

    def _take_decoded(self) -> None:
        while self._pending and self._pending[0].decoded.done():
            work = self._pending.popleft()
            work.decoded.result()
            if work.error is not None:
                self._send_dlq([(work, work.error)])
            else:
                self._ready.append(work)

    def _dispatch(self, force: bool = False) -> None:
        """Hand batches to the inference thread.

        A batch leaves when it is full, when its oldest frame waited ``max_wait_ms``, or
        when the engine is idle and nothing else is being decoded (waiting would only add
        latency). While the engine is busy, partial batches keep growing.
        """
        size = self.settings.batch.size
        max_wait_ns = self.settings.batch.max_wait_ms * 1_000_000
        while self._ready and len(self._batches) < INFERENCE_QUEUE_DEPTH:
            full = len(self._ready) >= size
            waited = time.time_ns() - self._ready[0].received_ns >= max_wait_ns
            idle = not self._batches and not self._pending
            if not (full or waited or idle or force):
                return
            batch = [self._ready.popleft() for _ in range(min(size, len(self._ready)))]
            self.metrics.batch_size.observe(len(batch))
            future = self._inference.submit(self._infer_job, batch)
            future.add_done_callback(self._wakeup)
            self._batches.append((batch, future))

    # -- inference thread --

    def _infer_job(self, batch: list[Work]) -> BatchOutcome:
        start = time.time_ns()
        groups: dict[str, list[int]] = {}
        for i, work in enumerate(batch):
            groups.setdefault(work.frame.product, []).append(i)
        raw: list[Any] = [None] * len(batch)
        for product, idx in groups.items():
            images = [batch[i].image for i in idx]
            for i, outcome in zip(idx, self._score_group(images, product), strict=True):
                raw[i] = outcome
        scored_end = time.time_ns()
        # The engine's part of the scorer call (resize + features), from the scorer's timings.
        engine_ms = sum(
            r.timings.get("resize_ms", 0.0) + r.timings.get("features_ms", 0.0)
            for r in raw
            if not isinstance(r, MessageError) and getattr(r, "timings", None)
        )
        features_end = min(scored_end, start + int(engine_ms * 1e6))
        items = [
            Scored(work, error=r) if isinstance(r, MessageError) else Scored(work, raw=r)
            for work, r in zip(batch, raw, strict=True)
        ]
        return BatchOutcome(items, start, features_end, scored_end)

    # -- post thread: messages and heatmaps, off the inference thread --

    def _build_job(self, outcome: BatchOutcome) -> BatchOutcome:
        n = len(outcome.items)
        for i, item in enumerate(outcome.items):
            if item.raw is None:
                self._release(item.work)
                continue
            try:
                outcome.items[i] = self._build(item.work, item.raw, n)
            except Exception as exc:  # a bug here must not stop the loop: DLQ the frame
                log.exception("building the result of offset %s failed", item.work.record.offset)
                error = MessageError(DlqReason.SCORING_FAILED, f"{type(exc).__name__}: {exc}")
                outcome.items[i] = Scored(item.work, error=error)
            finally:
                self._release(item.work)
        outcome.built_ns = time.time_ns()
        return outcome

    def _score_group(self, images: list[np.ndarray], product: str) -> list[Any]:
        from inference.records import ModelMismatchError
        from inference.store import ProductNotFoundError

        try:
            return self._score_retrying(images, product)
        except StoreAuthError:
            raise  # fatal for the worker, not for the frame: never a DLQ record
        except ProductNotFoundError as exc:
            return [MessageError(DlqReason.UNKNOWN_PRODUCT, str(exc))] * len(images)
        except ModelMismatchError as exc:
            return [MessageError(DlqReason.MODEL_MISMATCH, str(exc))] * len(images)
        except Aborted:
            raise
        except Exception as exc:
            if len(images) == 1:
                log.exception("scoring a frame of %s failed", product)
                return [MessageError(DlqReason.SCORING_FAILED, f"{type(exc).__name__}: {exc}")]
            log.warning("batch of %s failed (%s); scoring its frames one by one", product, exc)
            out: list[Any] = []
            for image in images:
                out.extend(self._score_group([image], product))
            return out

    def _score_retrying(self, images: list[np.ndarray], product: str) -> list[ScoreResult]:
        """Score, waiting out TransientErrors (forever, with back-off) until shutdown."""

        def sleep(delay: float) -> None:
            if self._abort.wait(delay):
                raise Aborted(f"gave up on a batch of {product} during shutdown")

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception()
            self.metrics.retries.labels(cause=type(exc).__name__).inc()
            delay = state.upcoming_sleep
            log.warning("scoring %s failed (%s); retrying in %.1fs", product, exc, delay)

        policy = retrying(
            initial_s=self.settings.retry.initial_backoff_s,
            max_s=self.settings.retry.max_backoff_s,
            sleep=sleep,
            before_sleep=before_sleep,
        )
        return policy(lambda: list(self.scorer.score(images, product)))

    def _build(self, work: Work, res: ScoreResult, batch_n: int) -> Scored:
        frame = work.frame
        now = utc_now()
        trace_id = trace_id_of(work.span)
        timings = frame_timings(
            frame,
            res,
            received_ns=work.received_ns,
            decode_ns=work.decode_end_ns - work.decode_start_ns,
            batch_size=batch_n,
            now=now,
        )
        shape = work.frame_shape
        if res.is_defective and shape != tuple(work.image.shape[:2]):
            # scored on the downscaled frame: regions in the frame's own pixels
            from inference.scorer import find_regions

            res.regions = find_regions(res.anomaly_map, float(res.threshold), shape)
            res.image_shape = shape
        result = build_result(
            frame,
            res,
            image_shape=shape,
            timings=timings,
            source=work.source,
            processed_at=now,
            trace_id=trace_id,
        )
        alarm = None
        if res.is_defective:
            heatmap = build_heatmap(
                work.image,
                res,
                result.alarm_id,
                self.settings.alarms.heatmap,
                self.settings.alarms.heatmap_dir,
                max_side=self.settings.alarms.heatmap_max_side,
            )
            alarm = build_alarm(
                frame, res, source=work.source, detected_at=now, heatmap=heatmap, trace_id=trace_id
            )
        return Scored(work, result=result, alarm=alarm, target_far=res.target_far)

    # -- publishing (main thread) --

    def _collect_inference(self) -> None:
        while self._batches and self._batches[0][1].done():
            batch, future = self._batches.popleft()
            try:
                outcome: BatchOutcome = future.result()
            except Aborted as exc:
                log.warning("%s; its %d frames stay uncommitted", exc, len(batch))
                for work in batch:
                    self._release(work)
                    _end_span(work.span, error="not processed: shutdown")
                continue
            self.metrics.stage_seconds.labels(stage="infer").observe(
                (outcome.end_ns - outcome.start_ns) / 1e9
            )
            built = self._post.submit(self._build_job, outcome)
            built.add_done_callback(self._wakeup)
            self._building.append((batch, built))

    def _collect_built(self) -> None:
        while self._building and self._building[0][1].done():
            outcome: BatchOutcome = self._building.popleft()[1].result()
            for item in outcome.items:
                if item.work.lost:
                    _end_span(item.work.span, error="partition revoked during processing")
            items = [s for s in outcome.items if not s.work.lost]
            dlq = [(s.work, s.error) for s in items if s.error is not None]
            if dlq:
                self._send_dlq(dlq)
            ok = [s for s in items if s.error is None]
            if ok:
                self._send_results(ok, outcome)

    def _send_results(self, scored: list[Scored], outcome: BatchOutcome) -> None:
        sends = []
        for item in scored:
            trace_headers = traceparent_of(item.work.span)
            key = item.work.record.key

            def send_result(item=item, key=key, th=trace_headers) -> Any:
                return self.publisher.send_result(item.result, key, th)

            unpublishable = self._unpublishable_dlq(item.work, "result")
            sends.append(self._send(send_result, [("DLQ metadata", unpublishable)]))
            if item.alarm is not None:

                def send_alarm(item=item, key=key, th=trace_headers, heatmap=True) -> Any:
                    alarm = (
                        item.alarm if heatmap else item.alarm.model_copy(update={"heatmap": None})
                    )
                    return self.publisher.send_alarm(alarm, key, th)

                fallbacks = [
                    ("the alarm without its heatmap", lambda f=send_alarm: f(heatmap=False)),
                    ("DLQ metadata", self._unpublishable_dlq(item.work, "alarm")),
                ]
                sends.append(self._send(send_alarm, fallbacks))
        box = Outbox([s.work for s in scored], sends, time.time_ns(), outcome=outcome)
        box.scored = scored
        self._outboxes.append(box)

    def _send(self, make: Callable[[], Any], fallbacks: list[tuple[str, Any]]) -> Send:
        return Send(make, self._acked(make()), list(fallbacks))

    def _dlq_record(self, work: Work, error: MessageError) -> DlqRecord:
        limits = self.settings.limits
        record = work.record
        return build_dlq_record(
            record.key,
            record.value,
            record.headers,
            error,
            work.source,
            self.settings.group,
            value_max_bytes=limits.dlq_value_max_bytes,
            claim_root=limits.claim_check_roots[0] if limits.claim_check_roots else None,
        )

    def _unpublishable_dlq(self, work: Work, what: str) -> Callable[[], Any]:
        """A send of the frame's DLQ metadata: its ``what`` could not be published."""

        def send() -> Any:
            error = MessageError(
                DlqReason.UNPUBLISHABLE, f"the frame's {what} was refused by the broker"
            )
            record = metadata_only(self._dlq_record(work, error), f"{what} unpublishable")
            return self.publisher.send_dlq(record)

        return send

    def _send_dlq(self, failures: list[tuple[Work, MessageError]]) -> None:
        sends = []
        reasons = {}
        for work, error in failures:
            record = work.record
            dlq = self._dlq_record(work, error)

            def send(dlq=dlq) -> Any:
                return self.publisher.send_dlq(dlq)

            def bare(dlq=dlq) -> Any:
                return self.publisher.send_dlq(metadata_only(dlq, "record refused by the broker"))

            sends.append(self._send(send, [("the DLQ metadata only", bare)]))
            reasons[id(work)] = error.reason.value
            log.info(
                "frame %s/%d@%d -> DLQ (%s: %s)",
                record.topic,
                record.partition,
                record.offset,
                error.reason.value,
                error.detail[:500],
            )
        box = Outbox([w for w, _ in failures], sends, time.time_ns(), dlq_reasons=reasons)
        self._outboxes.append(box)

    def _acked(self, future: Any) -> Any:
        """Wake the loop when the broker answers ``future`` (a kafka-python send future)."""
        future.add_both(self._wakeup)
        return future

    def _collect_acks(self) -> None:
        while self._outboxes and self._outboxes[0].done():
            box = self._outboxes[0]
            failed = box.failed()
            if failed and all(w.lost for w in box.works):
                failed = []  # nobody will commit these frames here: no point resending
            if failed:
                self._resend(box, failed)
                return
            self._outboxes.popleft()
            self._finish(box, time.time_ns())

    def _resend(self, box: Outbox, failed: list[int]) -> None:
        """Replace records the broker can never take by their fallback (at once); resend the
        others (an outage) with back-off."""
        outage = []
        refused = [box.sends[i].future for i in failed if unsendable(box.sends[i].future.exception)]
        if any(isinstance(f, FutureRecordMetadata) for f in refused):
            log.warning("the broker refused a record; starting a new producer")
            self.publisher.reset()
        for i in failed:
            send = box.sends[i]
            exc = send.future.exception
            if unsendable(exc) and send.fallbacks:
                what, make = send.fallbacks.pop(0)
                log.warning(
                    "a record was refused (%s: %s); sending %s", type(exc).__name__, exc, what
                )
                self.metrics.retries.labels(cause="unpublishable").inc()
                send.make = make
                send.future = self._acked(make())
            else:
                outage.append(i)
        if not outage:
            return
        errors = {type(box.sends[i].future.exception).__name__ for i in outage}
        delay = self._backoff(box.attempts)
        log.warning("%d publish(es) failed (%s); resending in %.1fs", len(outage), errors, delay)
        self.metrics.retries.labels(cause="publish").inc()
        if self._abort.wait(delay):
            return
        for i in outage:
            send = box.sends[i]
            send.future = self._acked(send.make())
        box.attempts += 1

    def _finish(self, box: Outbox, acked_ns: int) -> None:
        publish_s = (acked_ns - box.sent_ns) / 1e9
        self.metrics.stage_seconds.labels(stage="publish").observe(publish_s)
        scored = {id(s.work): s for s in box.scored}
        for work in box.works:
            if work.lost:  # revoked after it was sent: the new owner re-reads and commits it
                _end_span(work.span, error="partition revoked before commit", end_ns=acked_ns)
                continue
            self.tracker.done(work.tp, work.record.offset)
            tel = self.telemetry
            tel.child_span(work.span, "consume", work.received_ns, work.decode_start_ns)
            reason = box.dlq_reasons.get(id(work))
            decode_error = reason if work.error is not None else None
            tel.child_span(
                work.span, "decode", work.decode_start_ns, work.decode_end_ns, error=decode_error
            )
            item = scored.get(id(work))
            if box.outcome is not None and item is not None:
                oc = box.outcome
                n = {"adqc.batch.size": len(oc.items)}
                tel.child_span(work.span, "infer", oc.start_ns, oc.features_end_ns, n)
                tel.child_span(work.span, "score", oc.features_end_ns, oc.built_ns, n)
            tel.child_span(
                work.span,
                "publish",
                box.sent_ns,
                acked_ns,
                {"messaging.destination.name": self._destination(item, reason)},
            )
            if reason is not None:
                self.stats["dlq"] += 1
                tel.observe_failure(reason, work.frame.product if work.frame else None)
                work.span.set_attribute("adqc.dlq.reason", reason)
                _end_span(work.span, error=f"dead-lettered: {reason}", end_ns=acked_ns)
                continue
            result = item.result
            self.stats["results"] += 1
            tel.observe_result(
                product=result.product,
                line=result.line,
                camera=result.camera,
                decision=result.decision,
                score=result.score,
                threshold=result.threshold,
                latency_s=acked_ns / 1e9 - result.capture_time.timestamp(),
                target_far=item.target_far,
            )
            work.span.set_attribute("adqc.decision", result.decision)
            work.span.set_attribute("adqc.score", result.score)
            if item.alarm is not None:
                self.stats["alarms"] += 1
                alarm = item.alarm
                tel.observe_alarm(
                    product=alarm.product,
                    line=alarm.line,
                    camera=alarm.camera,
                    severity=alarm.severity,
                )
                work.span.set_attribute("adqc.alarm_id", item.alarm.alarm_id)
            _end_span(work.span, end_ns=acked_ns)

    def _destination(self, item: Scored | None, reason: str | None) -> str:
        topics = self.settings.topics
        if reason is not None:
            return topics.dlq
        if item is not None and item.alarm is not None:
            return f"{topics.results},{topics.alarms}"
        return topics.results

    # -- offsets and back-pressure --

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        offsets = self.tracker.committable()
        if not offsets:
            return
        self._last_commit = now
        try:
            self.consumer.commit(commit_map(offsets))
        except CommitFailedError as exc:
            log.warning("commit refused (group rebalanced): %s", exc)
            return
        except KafkaError as exc:
            log.warning("commit failed, will retry: %s", exc)
            self.metrics.retries.labels(cause="commit").inc()
            return
        self.tracker.mark_committed(offsets)
        self.stats["commits"] += 1
        self.metrics.commits.inc()

    def _backpressure(self) -> None:
        held = self.tracker.in_flight()
        self.metrics.in_flight.set(held)
        limit = self.settings.batch.max_in_flight
        budget = self.settings.batch.max_decoded_mib * 1024 * 1024
        if not self._paused and (held >= limit or self._over_budget()):
            self._paused = True
            self._pause_assigned()
        elif self._paused and held <= limit // 2 and self._decoded_bytes <= budget // 2:
            self._paused = False
            paused = self.consumer.paused()
            if paused:
                self.consumer.resume(*paused)
            self.metrics.paused_partitions.set(0)

    def _pause_assigned(self) -> None:
        assigned = self.consumer.assignment()
        missing = set(assigned) - set(self.consumer.paused())
        if missing:
            self.consumer.pause(*missing)
        self.metrics.paused_partitions.set(len(assigned))

    # -- rebalance, shutdown --

    def _settle(self, timeout_s: float) -> bool:
        """Finish every batch in flight and wait for its acks (no new batches)."""
        deadline = time.monotonic() + timeout_s
        while self._batches or self._building or self._outboxes:
            if time.monotonic() > deadline:
                return False
            self._take_decoded()
            self._collect_inference()
            self._collect_built()
            self._collect_acks()
            if self._batches or self._building or self._outboxes:
                self._wake.wait(0.01)
                self._wake.clear()
        return True

    def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance listener (kafka-python may call it on its IO thread): only record the
        revocation. No Kafka call here: the main loop applies it (:meth:`_apply_revocations`)
        after the poll returns."""
        if revoked:
            self._revocations.append(set(revoked))
            self._wake.set()

    def _apply_revocations(self) -> None:
        """Mark every frame of a revoked partition as lost: undispatched ones are dropped,
        batches in flight finish but publish nothing, sent ones are never committed (the new
        owner re-reads from the last commit; a re-published result keeps its ids)."""
        while self._revocations:
            revoked = self._revocations.popleft()
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
            lost = 0
            for queue in (self._pending, self._ready):
                keep = [w for w in queue if w.tp not in revoked]
                for work in queue:
                    if work.tp in revoked:
                        work.lost = True
                        lost += 1
                        self._release(work)
                        _end_span(work.span, error="partition revoked before processing")
                queue.clear()
                queue.extend(keep)
            works = [w for batch, _ in (*self._batches, *self._building) for w in batch]
            works += [w for box in self._outboxes for w in box.works]
            for work in works:
                if work.tp in revoked and not work.lost:
                    work.lost = True
                    lost += 1
            self.tracker.forget(revoked)
            self._rewind |= revoked
            if lost:
                self.metrics.retries.labels(cause="rebalance").inc(lost)
                log.info("%d frame(s) of revoked partitions dropped (the new owner re-reads)", lost)

    def _rewind_reassigned(self) -> set[TopicPartition]:
        """Seek revoked partitions that are assigned to us again to their committed offset
        (main thread: this asks the broker); returns those rewound. Those not assigned stay
        pending until they are."""
        rewound: set[TopicPartition] = set()
        if not self._rewind:
            return rewound
        assigned = set(self.consumer.assignment())
        for tp in sorted(self._rewind & assigned):
            try:
                offset = self.consumer.committed(tp)
                if offset is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)
            except (KafkaError, AssertionError, ValueError) as exc:  # retried at the next poll
                log.warning("rewinding %s:%d failed (%s); retrying", tp.topic, tp.partition, exc)
                continue
            self._rewind.discard(tp)
            rewound.add(tp)
        if rewound and self._paused:  # a pause does not survive a rebalance: re-apply it
            self._pause_assigned()
        return rewound

    def _drain(self) -> None:
        log.info("stopping: finishing %d batch(es) in flight", len(self._batches))
        try:
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.pause(*assigned)
        except KafkaError:
            pass
        if not self._settle(self.settings.retry.drain_timeout_s):
            log.warning("drain timed out; unfinished frames stay uncommitted")
            self._abort.set()
            self._settle(5.0)
        for queue in (self._pending, self._ready):
            for work in queue:
                _end_span(work.span, error="not processed: shutdown")
            queue.clear()
        self._commit(force=True)
        log.info(
            "stopped: %(frames)d frames, %(results)d results, %(alarms)d alarms, %(dlq)d DLQ",
            self.stats,
        )

    def _close(self) -> None:
        self._abort.set()
        self._decoder.shutdown(wait=True, cancel_futures=True)
        self._inference.shutdown(wait=True, cancel_futures=True)
        self._post.shutdown(wait=True, cancel_futures=True)
        try:
            if self.consumer is not None:
                self.consumer.close(autocommit=False)
        finally:
            self.publisher.close()
            self.telemetry.heartbeat(0)  # a closed loop holds no partitions: nothing to stall
            self.running.clear()


class _Listener(ConsumerRebalanceListener):
    """kafka-python runs these on its IO thread: they only record, never call the client."""

    def __init__(self, loop: ServeLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.on_revoked(set(revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        self.loop.on_revoked(set(lost))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


# --- helpers -----------------------------------------------------------------------------------


def _check_product(product: str) -> None:
    from inference.records import PRODUCT_NAME

    if not PRODUCT_NAME.match(product):
        raise MessageError(
            DlqReason.INVALID_HEADER,
            f"header 'product': {product!r} is not a valid product name",
        )


def _end_span(span: Span, error: str | None = None, end_ns: int | None = None) -> None:
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)
