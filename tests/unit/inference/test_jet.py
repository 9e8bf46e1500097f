"""The heatmap colours: our jet table matches matplotlib's (which serving no longer imports)."""

from __future__ import annotations

import numpy as np

from inference.scorer import jet


def test_jet_matches_matplotlib() -> None:
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [np.linspace(0.0, 1.0, 20001), rng.random(5000), [0.0, 1.0, 0.5, 255 / 256, 1 / 256]]
    ).astype(np.float32)
    np.testing.assert_allclose(jet(values), colormaps["jet"](values)[..., :3], rtol=0, atol=1e-12)
    assert jet(rng.random((7, 9))).shape == (7, 9, 3)
