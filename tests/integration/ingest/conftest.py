"""Fixtures of the ingest tests: a checkpoint, real frame images, an onboarded product in Redis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_testkit import onboard_unique
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[3]
BOTTLE = REPO_ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"
SHOTS = 4


@dataclass
class FrameSet:
    """Reference shots and test frames (good and defective), real when the dataset exists."""

    shots: list[Path]
    good: list[Path]
    defect: list[Path]
    real: bool


def _generated(root: Path) -> FrameSet:
    """Fallback when the datasets are absent: textured parts, defects = dark blob + scratch."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    base = 120 + 60 * np.cos(np.hypot(yy - 64, xx - 64) / 9.0)

    def part(defect: bool) -> np.ndarray:
        img = base + rng.normal(0, 4, base.shape)
        if defect:
            y, x = rng.integers(24, 88, size=2)
            img[y : y + 20, x : x + 16] = 10
            img[np.arange(30, 100), np.arange(30, 100)] = 250
        return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)

    out: dict[str, list[Path]] = {"shots": [], "good": [], "defect": []}
    for kind, n, bad in (("shots", SHOTS, False), ("good", 6, False), ("defect", 6, True)):
        for i in range(n):
            path = root / f"{kind}_{i:02d}.png"
            Image.fromarray(part(bad)).save(path)
            out[kind].append(path)
    return FrameSet(out["shots"], out["good"], out["defect"], real=False)


@pytest.fixture(scope="session")
def frame_images(tmp_path_factory: pytest.TempPathFactory) -> FrameSet:
    """MVTec bottle: 4 train/good shots, 6 test/good, 6 defective (3 broken_large, 3
    contamination); generated parts if the shared datasets are absent."""
    if not BOTTLE.is_dir():
        return _generated(tmp_path_factory.mktemp("frames"))
    test = BOTTLE / "test"
    return FrameSet(
        shots=sorted((BOTTLE / "train" / "good").glob("*.png"))[:SHOTS],
        good=sorted((test / "good").glob("*.png"))[:6],
        defect=sorted((test / "broken_large").glob("*.png"))[:3]
        + sorted((test / "contamination").glob("*.png"))[:3],
        real=True,
    )


@pytest.fixture(scope="session")
def ingest_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An explicitly UNTRAINED projector checkpoint (fixed seed).

    The streaming behaviour under test does not depend on the projector's training, and a
    fixed checkpoint keeps these tests independent of the shipped one changing.
    """
    from pretrain.checkpoint import save_untrained

    return save_untrained(tmp_path_factory.mktemp("ckpt") / "untrained.pt")


@pytest.fixture(scope="session")
def local_engine(ingest_checkpoint: Path) -> Any:
    from inference.engines.local import LocalEngine

    return LocalEngine(checkpoint=ingest_checkpoint)


@dataclass
class Product:
    name: str
    store_url: str
    threshold: float


@pytest.fixture(scope="session")
def product(redis_server: Any, local_engine: Any, frame_images: FrameSet) -> Product:
    """A product onboarded into the session Redis from the shots (unique name)."""
    from inference.store import open_store

    result = onboard_unique(
        local_engine, open_store(redis_server.url), "bottle", frame_images.shots
    )
    return Product(result.record.product, redis_server.url, result.record.calibration.threshold)


@pytest.fixture(scope="session")
def scorer(local_engine: Any, product: Product) -> Any:
    from inference.scorer import Scorer
    from inference.store import open_store

    return Scorer(local_engine, open_store(product.store_url), batch_size=4)
