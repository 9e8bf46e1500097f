"""ingest: the streaming side of adqc, on Apache Kafka.

Owns the Kafka message schemas (``schemas``: frames headers, results, alarms, DLQ; JSON Schemas
in docs/schemas/), the serve settings (``settings``), frame decoding/validation (``decode``, over
``inference.frames``), the manual-commit consumer and offset tracking (``consumer``), the
idempotent publisher (``publisher``), the serve loop (``loop``: the Kafka state machine), the
messages it sends (``messages``: result, alarm, heatmap, DLQ info from a ScoreResult), running
``adqc serve`` (``runtime``: factories, start-up retries, signals), telemetry (``telemetry``:
OpenTelemetry spans, Prometheus metrics), the camera simulator (``camera``), the MES-like alarm
subscriber (``alarms``), start-up checks (``preflight``), a fix of kafka-python 3.0's socket
reader (``kafka_fix``) and the commands (``cli``).

Depends on ``inference`` (Scorer, engines, reference store) and never on ``deploy``.
Docs: docs/messages.md, docs/OPERATIONS.md ("The serve loop"), docs/PERFORMANCE.md.
"""
