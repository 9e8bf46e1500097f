"""Onboarding and the LocalEngine with the real model code (UNTRAINED projector: plumbing only)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inference.engines.base import InvalidImageError
from inference.onboarding import OnboardingError, find_images, onboard
from inference.records import ModelMismatchError
from inference.scorer import Scorer
from inference.store import open_store
from pretrain.preprocess import ImageLoadError, load_image


def _texture(seed: int, size: int = 160) -> np.ndarray:
    """A good part: the same woven pattern with a little noise and a small shift."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] + rng.integers(0, 4, size=2)[:, None, None]
    base = 128 + 60 * np.sin(x / 3.0) * np.cos(y / 5.0)
    image = base[..., None] + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    for i in range(5):
        Image.fromarray(_texture(i)).save(directory / f"good_{i}.png")
    (directory / "notes.txt").write_text("not an image")
    return directory


def test_local_engine_features_and_checks(local_engine):
    assert local_engine.image_size == 224
    assert local_engine.model_id.startswith("mobilenet_v2:")
    store = open_store("memory://")
    shots = np.stack([_texture(i, 224) for i in range(2)])
    from inference.onboarding import build_record

    record = build_record(local_engine, "cloth", shots)
    record = record.model_copy(update={"version": store.publish(record)})
    features = local_engine.features(shots[:1], record)
    spec = local_engine.model.spec
    grids = [224 // stride for stride in spec.strides]
    assert [f.shape for f in features] == [
        (1, c, g, g) for c, g in zip(spec.channels, grids, strict=True)
    ]
    assert all(f.dtype == np.float32 for f in features)
    assert record.cache_key in local_engine._pools  # the pool is built once per version
    with pytest.raises(InvalidImageError, match="224x224"):
        local_engine.features(np.zeros((1, 100, 100, 3), np.uint8), record)
    other = record.model_copy(update={"model_id": "mobilenet_v2:000000000000"})
    with pytest.raises(ModelMismatchError, match="000000000000"):
        local_engine.features(shots[:1], other)


@pytest.mark.parametrize(
    "detector", ["s8-patchcore", "ensemble", "featurenorm", "patchcore", "padim"]
)
def test_onboard_leave_one_out_then_score(local_engine, good_dir, detector):
    store = open_store("memory://")
    result = onboard(local_engine, store, "cloth", good_dir, shots=3, detector=detector)
    record = result.record
    assert record.version == 1 and store.latest_version("cloth") == 1
    assert [p.name for p in result.shots] == ["good_0.png", "good_1.png", "good_2.png"]
    assert result.ignored == 2
    spec = local_engine.model.spec
    patches = [(224 // stride) ** 2 for stride in spec.strides]
    assert [a.shape for a in record.pool] == [
        (3 * p, c) for p, c in zip(patches, spec.channels, strict=True)
    ]
    calibration = record.calibration
    assert calibration.method == "leave-one-out" and calibration.n_normals == 3
    assert calibration.threshold > max(calibration.normal_scores)
    assert record.detector == detector
    if detector == "patchcore":
        finest = max(patches)  # PatchCore keeps every patch of the finest of its levels
        assert record.detector_state["memory"].shape[0] == 3 * finest
        assert record.detector_config.n_levels == 3
        assert record.detector_config.target_dim == max(spec.channels)  # resolved by fit
    elif detector == "padim":
        assert record.detector_state["precision"].shape == (max(patches), 100, 100)
    elif detector in ("s8-patchcore", "ensemble"):  # stride-8 PatchCore, 32 + 96 channels
        grid = 32 if detector == "s8-patchcore" else 28  # 256 px (the preset's size) or 224
        assert record.image_size == grid * 8
        assert record.detector_state["members.0.memory"].shape == (3 * grid * grid, 128)
        members = 1 if detector == "s8-patchcore" else 2
        assert record.detector_state["scale_std"].shape == (members,)
        assert min(record.detector_state["scale_std"]) > 0
    else:
        assert record.detector_state == {}
    # the stored record (decoded from its bytes by a fresh store object) scores like the original
    images = [load_image(good_dir / "good_3.png"), load_image(good_dir / "good_4.png")]
    fresh = Scorer(local_engine, open_store("memory://"))
    fresh.store.publish(store.get("cloth"))
    direct = Scorer(local_engine, store).score(images, "cloth")
    again = fresh.score(images, "cloth")
    np.testing.assert_allclose([r.score for r in direct], [r.score for r in again], rtol=1e-5)
    assert all(np.isfinite(r.score) for r in direct)


def test_held_out_calibration_scores_match_the_scorer(local_engine, good_dir, tmp_path):
    store = open_store("memory://")
    shots = [good_dir / f"good_{i}.png" for i in range(3)]
    held = [good_dir / "good_3.png", good_dir / "good_4.png"]
    result = onboard(local_engine, store, "cloth", shots, shots=3, calibration_images=held)
    calibration = result.record.calibration
    assert calibration.method == "held-out" and calibration.n_normals == 2
    scored = Scorer(local_engine, store).score([load_image(p) for p in held], "cloth")
    np.testing.assert_allclose(calibration.normal_scores, [r.score for r in scored], rtol=1e-5)


def test_onboarding_refusals(local_engine, good_dir, tmp_path):
    store = open_store("memory://")
    with pytest.raises(OnboardingError, match="found 5 image\\(s\\).*fewer than --shots 8"):
        onboard(local_engine, store, "cloth", good_dir, shots=8)
    with pytest.raises(OnboardingError, match="at least 2"):
        onboard(local_engine, store, "cloth", good_dir, shots=1)
    with pytest.raises(OnboardingError, match="no image files"):
        onboard(local_engine, store, "cloth", tmp_path, shots=2)
    with pytest.raises(OnboardingError, match="no such directory"):
        onboard(local_engine, store, "cloth", tmp_path / "missing", shots=2)
    with pytest.raises(OnboardingError, match="both"):
        onboard(local_engine, store, "cloth", good_dir, shots=2, calibration_images=good_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(_texture(0)).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageLoadError, match="b.png"):
        onboard(local_engine, store, "cloth", broken, shots=2)
    with pytest.raises(ValueError, match="invalid product name"):
        onboard(local_engine, store, "no spaces", good_dir, shots=2)
    assert store.list_products() == []


def test_s8_patchcore_input_size_is_a_product_setting(local_engine, good_dir):
    """A product onboarded at its own size: bank, calibration and scoring all at that size,
    and a defect still stands out where it is."""
    from pretrain.detectors.ensemble import S8_BASE_SIZE, S8_CORESET_THRESHOLD

    store = open_store("memory://")
    shots = [good_dir / f"good_{i}.png" for i in range(3)]
    held = [good_dir / "good_3.png", good_dir / "good_4.png"]
    result = onboard(
        local_engine, store, "cloth", shots, shots=3, calibration_images=held, image_size=160
    )
    record = result.record
    assert record.image_size == 160 and record.detector == "s8-patchcore"
    assert record.detector_state["members.0.memory"].shape == (3 * 20 * 20, 128)  # 160 / 8
    member = record.detector_config.members[0].detector
    assert member.coreset_threshold == -(-S8_CORESET_THRESHOLD * 160**2 // S8_BASE_SIZE**2)
    scorer = Scorer(local_engine, store)
    scored = scorer.score([load_image(p) for p in held], "cloth")
    assert scored[0].anomaly_map.shape == (160, 160)
    np.testing.assert_allclose(
        record.calibration.normal_scores, [r.score for r in scored], rtol=1e-5
    )
    good, scored = load_image(held[0]), scored[0]
    defect = good.copy()
    defect[60:90, 90:120] = 255  # a bright patch on the 160 px cloth
    (bad,) = scorer.score([defect], "cloth")
    assert bad.score > 1.5 * scored.score
    y, x = np.unravel_index(np.argmax(bad.anomaly_map), bad.anomaly_map.shape)
    assert 50 <= y <= 100 and 80 <= x <= 130


@pytest.mark.parametrize(
    ("detector", "size", "message"),
    [
        ("s8-patchcore", 150, "multiple of 16 from 64 to 512 px, not 150"),
        ("s8-patchcore", 48, "not 48"),
        ("s8-patchcore", 528, "not 528"),
        ("featurenorm", 256, "setting of the s8-patchcore detector; featurenorm"),
        ("ensemble", 256, "setting of the s8-patchcore detector; ensemble"),
    ],
)
def test_input_size_refusals_name_the_setting(local_engine, good_dir, detector, size, message):
    store = open_store("memory://")
    with pytest.raises(OnboardingError, match=message):
        onboard(local_engine, store, "cloth", good_dir, shots=2, detector=detector, image_size=size)
    assert store.list_products() == []


def test_find_images_accepts_globs(good_dir):
    assert len(find_images(good_dir / "good_*.png")) == 5
    assert len(find_images(str(good_dir / "good_1.png"))) == 1


def test_onboarding_refuses_images_serve_would_reject_naming_the_file(tmp_path):
    """A 1x1 (or 8x8) reference is below serve's minimum side: refused, the file named."""
    from inference.onboarding import load_images

    tiny = tmp_path / "tiny-ref.png"
    Image.new("RGB", (1, 1)).save(tiny)
    with pytest.raises(ImageLoadError, match=r"tiny-ref\.png is 1x1; sides must be within"):
        load_images([tiny], 32)


def test_shipped_s8_projector_onboards_the_ensemble_and_scores(good_dir):
    """`adqc product add --backbone mobilenet_v2_s8 --detector ensemble`: the shipped projector
    of the default's levels (features.6 + 13) loads, its two levels feed FeatureNorm, and the
    stride-8 PatchCore member reads levels 2-3 of the flat list."""
    from inference.engines.local import LocalEngine

    engine = LocalEngine(backbone="mobilenet_v2_s8")
    assert engine.model_id.startswith("mobilenet_v2_s8:")
    store = open_store("memory://")
    record = onboard(engine, store, "cloth", good_dir, shots=3, detector="ensemble").record
    assert [a.shape for a in record.pool] == [(3 * 28 * 28, 32), (3 * 14 * 14, 96)]
    members = record.detector_config.members
    assert [m.source for m in members] == ["stride8", "adpretrain"]
    assert members[0].levels == (2, 3) and members[1].levels == (0, 1)
    images = [load_image(good_dir / "good_3.png"), load_image(good_dir / "good_4.png")]
    results = Scorer(engine, store).score(images, "cloth")
    assert all(np.isfinite(r.score) for r in results)
