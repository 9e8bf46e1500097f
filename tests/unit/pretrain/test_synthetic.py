"""Synthetic anomaly generators: exact masks, determinism, variety."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.data.synthetic import (
    SyntheticAnomalies,
    cutpaste,
    perlin_mask,
    perlin_noise,
    perlin_texture_anomaly,
    procedural_texture,
)


def _image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_perlin_noise_is_smooth_and_bounded():
    rng = np.random.default_rng(0)
    n = perlin_noise((64, 48), (4, 2), rng)
    assert n.shape == (64, 48)
    assert np.abs(n).max() <= 1.5
    assert np.abs(np.diff(n, axis=0)).max() < 0.3  # smooth at 16 px per lattice cell


def test_perlin_mask_never_empty():
    for seed in range(10):
        m = perlin_mask(32, np.random.default_rng(seed))
        assert m.dtype == bool and m.shape == (32, 32)
        assert 0 < m.mean() <= 0.5 or m.sum() > 0


@pytest.mark.parametrize("with_texture", [False, True])
def test_perlin_anomaly_mask_is_exact(with_texture):
    image = np.full((64, 64, 3), 128, np.uint8)
    texture = np.zeros((50, 70, 3), np.uint8) if with_texture else None
    for seed in range(5):
        out, mask = perlin_texture_anomaly(image, np.random.default_rng(seed), texture)
        assert out.shape == image.shape and mask.shape == (64, 64) and mask.dtype == np.uint8
        changed = (out != image).any(-1)
        assert not changed[mask == 0].any()  # nothing outside the mask moved
        assert mask.sum() > 0
        if with_texture:
            assert changed[mask == 1].mean() > 0.95  # black texture differs from grey everywhere


@pytest.mark.parametrize("scar", [True, False])
def test_cutpaste_mask_is_the_pasted_region(scar):
    image = _image()
    for seed in range(10):
        out, mask = cutpaste(image, np.random.default_rng(seed), scar=scar)
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        changed = (out != image).any(-1)
        assert not changed[mask == 0].any()
        # random noise pasted elsewhere differs almost everywhere inside the mask
        assert changed[mask == 1].mean() > 0.8
    areas = [cutpaste(image, np.random.default_rng(s), scar=scar)[1].mean() for s in range(20)]
    if scar:
        assert max(areas) < 0.1  # thin scars
    else:
        assert max(areas) > 0.02


def test_procedural_textures_vary():
    textures = [procedural_texture(32, np.random.default_rng(s)) for s in range(12)]
    assert all(t.shape == (32, 32, 3) and t.dtype == np.uint8 for t in textures)
    assert len({t.tobytes() for t in textures}) == 12


def test_synthetic_anomalies_deterministic_and_mixed():
    image = _image(48)
    gen = SyntheticAnomalies()
    a = gen(image, np.random.default_rng(7), texture=_image(48, 1))
    b = gen(image, np.random.default_rng(7), texture=_image(48, 1))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    masks = [gen(image, np.random.default_rng(s))[1] for s in range(30)]
    assert all(m.sum() > 0 for m in masks)
    with pytest.raises(ValueError, match="unknown"):
        SyntheticAnomalies(["nope"])
    only_scar = SyntheticAnomalies(["scar"])
    assert only_scar(image, np.random.default_rng(0))[1].mean() < 0.1
