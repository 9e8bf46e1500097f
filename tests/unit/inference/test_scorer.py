"""Scorer: decisions, regions, batching, caching, heatmaps and bad input (stand-in engine)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.calibration import calibrate
from inference.engines.base import InvalidImageError
from inference.records import ModelMismatchError, ProductRecord
from inference.scorer import MAX_REGIONS, Scorer, find_regions, heatmap_png
from inference.store import ProductNotFoundError, open_store
from pretrain.detectors import FeatureNormConfig


def _record(threshold_scores=(0.05, 0.06, 0.055, 0.05), **change) -> ProductRecord:
    fields = dict(
        product="panel",
        model_id="mobilenet_v2:0123456789ab",
        backbone="mobilenet_v2",
        image_size=64,
        shots=4,
        detector_config=FeatureNormConfig(),
        pool=[np.zeros((4, 1), np.float32)],
        calibration=calibrate(list(threshold_scores), 0.01),
    )
    fields.update(change)
    return ProductRecord(**fields)


def _dark(h=120, w=90) -> np.ndarray:
    return np.full((h, w, 3), 10, np.uint8)


def _with_spot(h=120, w=90) -> np.ndarray:
    image = _dark(h, w)
    image[30:60, 45:75] = 255  # rows 30..59, columns 45..74
    return image


@pytest.fixture
def scorer(brightness_engine):
    store = open_store("memory://")
    store.publish(_record())
    return Scorer(brightness_engine, store, batch_size=2)


def test_decisions_scores_and_regions(scorer):
    results = scorer.score([_dark(), _with_spot(), _dark(50, 300)], "panel")
    assert [r.is_defective for r in results] == [False, True, False]
    good, bad, _ = results
    assert bad.score > bad.threshold > good.score
    assert bad.anomaly_map.shape == (64, 64) and bad.anomaly_map.dtype == np.float32
    assert bad.reference_version == 1 and bad.model_id == "mobilenet_v2:0123456789ab"
    assert good.regions == []
    (region,) = bad.regions
    x0, y0, x1, y1 = region.bbox  # in the 90x120 input image's pixels, around the spot
    assert 25 <= x0 <= 55 and 60 <= x1 <= 90 and 15 <= y0 <= 40 and 50 <= y1 <= 75
    assert region.peak == pytest.approx(bad.score)
    assert region.area > 0
    assert set(bad.timings) >= {"features_ms", "detector_ms", "total_ms"}
    assert bad.to_dict()["regions"][0]["bbox"] == region.bbox
    assert "anomaly_map" not in bad.to_dict()


def test_scores_do_not_depend_on_the_batch(scorer):
    alone = scorer.score([_with_spot()], "panel")[0].score
    batched = scorer.score([_dark(), _dark(), _with_spot()], "panel")[2].score
    assert alone == pytest.approx(batched, rel=1e-6)  # raw scores, no per-batch normalisation


def test_new_versions_are_picked_up_and_records_cached(brightness_engine):
    store = open_store("memory://")
    store.publish(_record())
    scorer = Scorer(brightness_engine, store)
    for _ in range(3):
        assert scorer.score([_dark()], "panel")[0].reference_version == 1
    store.publish(_record(threshold_scores=(0.5, 0.6, 0.55, 0.5)))
    second = scorer.score([_with_spot()], "panel")[0]
    assert second.reference_version == 2 and second.threshold > 0.6


def test_unknown_product_and_model_mismatch(brightness_engine):
    store = open_store("memory://")
    store.publish(_record(model_id="mobilenet_v2:ffffffffffff"))
    scorer = Scorer(brightness_engine, store)
    with pytest.raises(ProductNotFoundError, match="unknown product 'nope'"):
        scorer.score([_dark()], "nope")
    with pytest.raises(ModelMismatchError, match="ffffffffffff.*0123456789ab"):
        scorer.score([_dark()], "panel")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((8, 64, 3), np.uint8), "smaller than"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_images_are_refused_naming_their_position(scorer, image, message):
    with pytest.raises(InvalidImageError, match=f"image 1: .*{message}"):
        scorer.score([_dark(), image], "panel")


def test_engine_refuses_unresized_batches(brightness_engine):
    with pytest.raises(InvalidImageError, match="this engine takes 64x64"):
        brightness_engine.features(np.zeros((1, 32, 32, 3), np.uint8), _record())


def test_find_regions_separates_components_and_orders_by_peak():
    anomaly = np.zeros((20, 20), np.float32)
    anomaly[2:4, 2:5] = 1.0
    anomaly[10:15, 10:12] = 3.0
    regions = find_regions(anomaly, 0.5, image_shape=(40, 40))
    assert [r.peak for r in regions] == [3.0, 1.0]
    # boxes and areas in frame pixels: the 20x20 map covers a 40x40 frame (4 pixels each)
    assert regions[0].bbox == (20, 20, 24, 30) and regions[0].area == 40
    assert regions[1].bbox == (4, 4, 10, 8) and regions[1].area == 24
    assert find_regions(anomaly, 0.5)[0].area == 10  # no frame shape: map pixels
    assert find_regions(anomaly, 5.0) == []


def test_find_regions_peaks_and_areas_agree_with_scipys_measurements():
    """Many components of a noisy map: every region's peak and area are scipy's."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.random.default_rng(3).random((96, 96)), 2)
    anomaly = smooth.astype(np.float32)
    threshold = float(np.quantile(anomaly, 0.85))
    labels, count = ndimage.label(anomaly > threshold, structure=np.ones((3, 3), dtype=bool))
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(anomaly, labels, index)
    areas = ndimage.sum_labels(anomaly > threshold, labels, index)
    want = sorted(zip(peaks, areas, strict=True), reverse=True)[:MAX_REGIONS]
    got = [(r.peak, r.area) for r in find_regions(anomaly, threshold)]
    assert count > 3 and got == [(float(p), int(a)) for p, a in want]


def test_heatmap_png_is_a_png_of_the_input_size(scorer):
    image = _with_spot()
    result = scorer.score([image], "panel")[0]
    png = heatmap_png(image, result.anomaly_map, result.threshold)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.size == (90, 120)
    pixels = np.asarray(decoded)
    assert (pixels == 255).all(axis=2).any()  # the outline of the region above threshold


def test_read_only_features_are_scored_without_a_torch_warning():
    """Triton hands back read-only arrays; scoring them must neither warn nor differ."""
    import warnings

    from inference.scorer import maps_and_scores
    from pretrain.detectors import FeatureNorm

    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 4, 3, 3)).astype(np.float32) for _ in range(2)]
    frozen = [f.copy() for f in features]
    for f in frozen:
        f.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps, scores = maps_and_scores(FeatureNorm(), frozen, 12)
    expect_maps, expect_scores = maps_and_scores(FeatureNorm(), features, 12)
    np.testing.assert_array_equal(maps, expect_maps)
    np.testing.assert_array_equal(scores, expect_scores)
    assert maps.shape == (2, 12, 12)
