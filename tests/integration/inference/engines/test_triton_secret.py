"""The Triton model repository holds no Redis password; the model reads it at start-up from a
mounted secret file (ADQC_REDIS_PASSWORD_FILE) and serves from a password-protected Redis."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.triton_repo import build_model_repository
from inference.engines.local import LocalEngine
from inference.engines.triton import TritonEngine
from inference.onboarding import build_record
from inference.store import open_store
from pretrain.checkpoint import save_untrained

SECRET = "tr1ton-redis-secret"


@pytest.mark.integration
def test_triton_model_takes_the_redis_password_from_a_secret_file(
    tmp_path, redis_server_factory, triton_server_factory, monkeypatch
):
    redis = redis_server_factory(password=SECRET)
    assert SECRET in redis.url
    checkpoint = save_untrained(tmp_path / "untrained.pt", "mobilenet_v2", num_tokens=64)
    repo = tmp_path / "model_repository"
    build_model_repository(repo, checkpoint=checkpoint, redis_url=redis.url, kind="cpu")
    for path in repo.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    secret_file = tmp_path / "secret" / "redis-password"
    secret_file.parent.mkdir()
    secret_file.write_text(SECRET + "\n")
    monkeypatch.delenv("ADQC_STORE__URL", raising=False)
    monkeypatch.delenv("ADQC_REDIS_URL", raising=False)
    monkeypatch.delenv("ADQC_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("ADQC_REDIS_PASSWORD_FILE", str(secret_file))  # tritonserver's env
    server = triton_server_factory(repo)

    local = LocalEngine(checkpoint=repo / "adqc_features/1/checkpoint.pt")
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with open_store(redis.url) as store:
        # a projector detector: the engine's features are what its record reads
        record = build_record(local, "secret-part", images, detector="featurenorm")
        record = record.model_copy(update={"version": store.publish(record)})
    engine = TritonEngine(server.grpc_url, timeout_s=60)
    try:
        remote = engine.features(images, record)
    finally:
        engine.close()
    expected = local.features(images, record)
    assert len(remote) == len(expected)
    for a, b in zip(remote, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
