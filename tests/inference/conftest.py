"""Fixtures for the inference tests: small records and every store backend."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from inference.calibration import calibrate
from inference.records import ProductRecord
from inference.store import open_store
from pretrain.detectors import detector_config


def make_record(
    product: str = "widget",
    *,
    model_id: str = "mobilenet_v2:0123456789ab",
    detector: str = "featurenorm",
    levels: tuple[tuple[int, int], ...] = ((64, 8), (16, 12)),
    seed: int = 0,
    threshold_scores: tuple[float, ...] = (1.0, 1.2, 1.1, 0.9),
) -> ProductRecord:
    """A valid, unpublished record with random arrays (no model needed)."""
    rng = np.random.default_rng(seed)
    pool = [rng.standard_normal(shape).astype(np.float32) for shape in levels]
    config, state = detector_config(detector), {}
    if detector == "patchcore":  # a bank of 32 patches, 12 wide (as if fitted)
        config = detector_config(detector, embed_dim=12, target_dim=12)
        state = {
            "memory": rng.standard_normal((32, 12)).astype(np.float32),
            "n_patches_seen": np.array(32),
        }
    elif detector != "featurenorm":
        raise ValueError(f"make_record builds featurenorm and patchcore records, not {detector}")
    return ProductRecord(
        product=product,
        model_id=model_id,
        backbone=model_id.split(":")[0],
        image_size=64,
        shots=4,
        pool=pool,
        detector_config=config,
        detector_state=state,
        calibration=calibrate(list(threshold_scores), 0.01),
    )


@pytest.fixture
def record_factory():
    return make_record


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session Redis with a key prefix of its own, so tests do not see each other's keys."""
    return f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        "memory",
        "file",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("tiered", marks=pytest.mark.integration),  # Redis cache + durable dir
    ]
)
def store_url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    if request.param == "tiered":
        return f"{request.getfixturevalue('redis_url')}&durable=file://{tmp_path / 'durable'}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
def store(store_url):
    with open_store(store_url) as opened:
        yield opened


class BrightnessEngine:
    """A deterministic stand-in engine: one level whose single channel is each 8x8 cell's mean
    brightness (0..1), so FeatureNorm maps are bright where the image is bright."""

    def __init__(self, model_id: str = "mobilenet_v2:0123456789ab", image_size: int = 64):
        self.model_id = model_id
        self.image_size = image_size
        self.calls = 0

    def features(self, images: np.ndarray, record: ProductRecord) -> list[np.ndarray]:
        from inference.engines.base import check_batch

        record.check_model(self.model_id)
        check_batch(images, self.image_size)
        self.calls += 1
        b, s = images.shape[0], self.image_size
        cells = images.mean(axis=3).reshape(b, s // 8, 8, s // 8, 8).mean(axis=(2, 4)) / 255.0
        return [cells[:, None].astype(np.float32)]


@pytest.fixture
def brightness_engine():
    return BrightnessEngine()


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """An explicitly UNTRAINED mobilenet_v2 projector (plumbing tests only, never results)."""
    from pretrain.checkpoint import save_untrained

    return save_untrained(tmp_path_factory.mktemp("ckpt") / "untrained.pt", num_tokens=64)


@pytest.fixture(scope="session")
def local_engine(untrained_checkpoint):
    from inference.engines.local import LocalEngine

    return LocalEngine(untrained_checkpoint)
