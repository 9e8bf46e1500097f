"""The default-detector candidates: the bench measures what `adqc product add` ships, and the
rule that picks the default."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.peer import candidates, choose, exchange
from benchmarks.peer.cases import load_bench_class
from inference.onboarding import build_record
from inference.scorer import Scorer
from inference.store import open_store
from inference.stride8 import Stride8Features
from pretrain.preprocess import load_batch
from tests.inference_testkit import local_engine, untrained_checkpoint  # noqa: F401

SIZE = 224


def _part(path: Path, seed: int, spot: bool = False) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96]
    img = 128 + 50 * np.sin(x / 4.0) * np.cos(y / 6.0)
    img = np.clip(img[..., None] + rng.normal(0, 5, (96, 96, 3)), 0, 255).astype(np.uint8)
    if spot:
        img[30:50, 40:60] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture
def part(tmp_path: Path) -> Path:
    root = tmp_path / "toy" / "part"
    for i in range(5):  # 3 references + 2 held-out calibration images
        _part(root / "train/good" / f"{i:03d}.png", i)
    for i in range(2):
        _part(root / "test/good" / f"{i:03d}.png", 10 + i)
        _part(root / "test/spot" / f"{i:03d}.png", 20 + i, spot=True)
    return root


def test_bench_row_scores_like_the_shipped_default(part: Path, local_engine) -> None:  # noqa: F811
    bc = load_bench_class(str(part), shots=3)
    inputs = exchange.prepare(bc, 3, SIZE)
    shipped = candidates.shipped_candidate()
    assert shipped == "s8-patchcore@256"  # docs/BACKBONES.md, "The default's input size"
    only = {shipped: candidates.CANDIDATES[shipped]}
    (row,) = candidates.run(local_engine_model(local_engine), candidates.aux_model(), inputs, only)
    (fast,) = candidates.run(
        local_engine_model(local_engine),
        candidates.aux_model(),
        inputs,
        only,
        stride8=Stride8Features(runtime="onnxruntime"),
    )
    np.testing.assert_allclose(fast.scores, row.scores, rtol=1e-4, atol=1e-4)  # ORT == torch
    refs, test = candidates.decoded(inputs, 0, 256, [])  # the files at the preset's size
    record = build_record(local_engine, "toy", refs, detector="s8-patchcore")
    assert record.detector == "s8-patchcore" and record.image_size == 256
    scorer = Scorer(local_engine, open_store("memory://"))
    product = np.array([r.score for r in scorer.score_with(list(test), record)])
    np.testing.assert_allclose(product, row.scores, rtol=1e-3, atol=1e-3)
    assert row.info["group_thresholds"][0] == pytest.approx(record.calibration.threshold, 1e-3)
    assert product[2:].min() > product[:2].max()  # the dark spot outscores the good parts


def test_held_out_threshold_is_what_onboarding_sets(part: Path, local_engine) -> None:  # noqa: F811
    bc = load_bench_class(str(part), shots=3)
    inputs = exchange.prepare(bc, 3, SIZE)
    held = candidates.calibration_images(inputs, 5)
    assert [len(h) for h in held] == [2]  # only two train/good images follow the references
    shipped = candidates.shipped_candidate()
    only = {shipped: candidates.CANDIDATES[shipped]}
    (row,) = candidates.run(
        local_engine_model(local_engine), candidates.aux_model(), inputs, only, held
    )
    refs, _ = candidates.decoded(inputs, 0, 256, [])
    held_256 = load_batch(bc.groups[0].train_good[3:5], 256)
    record = build_record(local_engine, "toy", refs, detector="s8-patchcore", calibration=held_256)
    assert record.calibration.method == "held-out"
    assert row.info["held_out_thresholds"][0] == pytest.approx(record.calibration.threshold, 1e-3)
    assert row.info["group_thresholds"][0] != pytest.approx(record.calibration.threshold, 1e-3)
    assert row.scores.shape == (4,)  # the calibration images are not test images


def local_engine_model(engine):
    from evaluation.runner import LoadedModel

    return LoadedModel(engine.model, {})


def _row(cls: str, source: str, method: str, **metrics: float) -> dict:
    features = "-" if source == "anomalib" else "candidate"
    return {
        "class": cls,
        "shots": 8,
        "source": source,
        "features": features,
        "method": method,
        **metrics,
    }


def test_rule_counts_points_then_mean_then_members() -> None:
    rows = [
        _row("a", "anomalib", "patchcore", image_auroc=0.80, pixel_auroc=0.90, aupro=0.70),
        _row("b", "anomalib", "patchcore", image_auroc=0.60),
        _row("a", "adqc", "x", image_auroc=0.81, pixel_auroc=0.90, aupro=0.60),
        _row("b", "adqc", "x", image_auroc=0.59),
        _row("a", "adqc", "x+y", image_auroc=0.79, pixel_auroc=0.91, aupro=0.71),
        _row("b", "adqc", "x+y", image_auroc=0.70),
        _row("a", "adqc", "z", image_auroc=0.70, pixel_auroc=0.80, aupro=0.60),
        _row("b", "adqc", "z", image_auroc=0.50),
    ]
    table = choose.standings(rows)
    assert [s.candidate for s in table] == ["x+y", "x", "z"]
    assert (table[0].wins, table[0].points) == (3, 4)
    assert table[1].wins == 2 and table[2].wins == 0
    # equal wins, means within TIE: the candidate with fewer members goes first
    rows[5] = _row("b", "adqc", "x+y", image_auroc=0.59)
    rows[4] = _row("a", "adqc", "x+y", image_auroc=0.81, pixel_auroc=0.90, aupro=0.61)
    assert choose.standings(rows)[0].candidate == "x"
    assert "x+y" in choose.markdown(rows)


def test_rule_breaks_a_tie_toward_the_smaller_input() -> None:
    rows = [
        _row("a", "anomalib", "patchcore", image_auroc=0.80),
        _row("a", "adqc", "s8@320", image_auroc=0.812),
        _row("a", "adqc", "s8", image_auroc=0.810),
        _row("a", "adqc", "s8@256", image_auroc=0.811),
    ]
    assert [s.candidate for s in choose.standings(rows)] == ["s8", "s8@256", "s8@320"]
    rows[1] = _row("a", "adqc", "s8@320", image_auroc=0.83)  # beyond the tie: the best mean
    assert choose.standings(rows)[0].candidate == "s8@320"


def test_sized_candidate_scores_its_own_decoding_at_the_peers_map_size(part: Path) -> None:
    """s8-patchcore@256 decodes the files at 256 px, fits and scores there (a 32x32 grid),
    and hands back maps at the peer's 224 px for the pixel metrics."""
    bc = load_bench_class(str(part), shots=3)
    inputs = exchange.prepare(bc, 3, SIZE)
    only = {c: candidates.CANDIDATES[c] for c in ("s8-patchcore", "s8-patchcore@256")}
    inputs.masks = np.zeros((len(inputs.labels), SIZE, SIZE), bool)  # ask for maps
    plain, sized = candidates.run(None, candidates.aux_model(), inputs, only)
    assert sized.maps.shape == plain.maps.shape == (4, SIZE, SIZE)
    assert not np.allclose(sized.scores, plain.scores)  # other pixels, other scores
    assert sized.scores[2:].min() > sized.scores[:2].max()  # the dark spot still outscores
    refs, test = candidates.decoded(inputs, 0, 256, [])
    assert refs.shape == (3, 256, 256, 3) and test.shape == (4, 256, 256, 3)


def test_bench_member_is_the_shipped_member_config_at_any_bank_size() -> None:
    """The bench's s8-patchcore row fits what `adqc product add` fits, coreset settings
    included (a copied literal once missed the blocked coreset at full shot)."""
    from benchmarks.peer.adqc_side import VARIANTS
    from pretrain.detectors import make_detector
    from pretrain.detectors.ensemble import preset_config

    method, kwargs = VARIANTS["patchcore_concat_256"]
    shipped = preset_config("s8-patchcore").members[0].detector
    assert make_detector(method, **kwargs).config == shipped
    plain = VARIANTS["patchcore_concat"][1]  # the 224 px member of the `ensemble` preset
    assert (
        make_detector("patchcore", **plain).config == preset_config("ensemble").members[0].detector
    )
    sized = VARIANTS["patchcore_concat_320"][1]
    assert sized["coreset_threshold"] == math.ceil(plain["coreset_threshold"] * (320 / 224) ** 2)
