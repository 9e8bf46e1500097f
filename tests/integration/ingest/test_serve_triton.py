"""The serve loop with the Triton engine (real tritonserver + Redis + Kafka)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import onboard_unique, producer, read_all, running_loop, serve_topics

from ingest.camera import CameraSimulator
from ingest.runtime import build_scorer
from ingest.schemas import AlarmMessage, ResultMessage
from ingest.settings import load_settings
from ingest.telemetry import Telemetry
from pretrain.preprocess import load_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_over_triton_matches_the_local_engine(
    kafka_broker: Any,
    redis_server: Any,
    triton_server_factory: Any,
    local_engine: Any,
    ingest_checkpoint: Path,
    frame_images: Any,
    tmp_path: Path,
) -> None:
    from deploy.triton_repo import build_model_repository
    from inference.scorer import Scorer
    from inference.store import open_store

    store_url = f"{redis_server.url}?prefix=ingest{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "model_repository"
    build_model_repository(
        repo, checkpoint=ingest_checkpoint, redis_url=store_url, max_batch=4, kind="cpu"
    )
    server = triton_server_factory(repo)
    store = open_store(store_url)
    name = onboard_unique(local_engine, store, "triton", frame_images.shots).record.product

    topics, config = serve_topics(kafka_broker, "triton", store_url, ingest_checkpoint)
    config["engine"] = {"kind": "triton", "url": server.grpc_url, "timeout_s": 60}
    settings = load_settings(None, **config)
    scorer = build_scorer(settings)  # the configured engine: TritonEngine over gRPC
    assert type(scorer.engine).__name__ == "TritonEngine"
    telemetry = Telemetry(settings.telemetry)
    paths = frame_images.good[:3] + frame_images.defect[:3]
    prod = producer(kafka_broker.bootstrap)
    cam = CameraSimulator(prod, topics.frames, name, camera="cam-t")
    with running_loop(settings, scorer, telemetry):
        sent = {}
        for i, path in enumerate(paths):
            _f, headers = cam.publish(path, i)
            sent[headers.frame_id] = path
        prod.flush()
        results = [
            ResultMessage.from_bytes(r.value)
            for r in read_all(kafka_broker.bootstrap, topics.results, len(paths), timeout_s=120)
        ]
        n_defect = sum(r.decision == "defect" for r in results)
        alarms = read_all(kafka_broker.bootstrap, topics.alarms, n_defect, timeout_s=30)
    prod.close()
    telemetry.shutdown()

    assert sorted(r.frame_id for r in results) == sorted(sent)
    local = Scorer(local_engine, store).score([load_image(sent[r.frame_id]) for r in results], name)
    for result, ref in zip(results, local, strict=True):
        assert abs(result.score - ref.score) < 1e-4
        assert result.decision == ("defect" if ref.is_defective else "ok")
        assert result.model_id == ref.model_id
    assert sorted(AlarmMessage.from_bytes(a.value).frame_id for a in alarms) == sorted(
        r.frame_id for r in results if r.decision == "defect"
    )
