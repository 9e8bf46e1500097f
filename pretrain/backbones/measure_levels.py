"""Which MobileNetV2 stages to tap: a tiny 8-shot 1-NN patch-distance image AUROC per tap set.

    python -m pretrain.backbones.measure_levels [--datasets ../shared/datasets]

For each category, the first 8 train/good images form the reference patch bank per level; a
test patch scores its L2 distance to the nearest bank patch (raw features, no residual, no
projector), divided by the level's typical reference-to-reference 1-NN distance (leave one
image out, so levels are comparable). A tap set's anomaly map is the mean of its levels' maps
upsampled to 224; the image score is the map's maximum. Prints image and pixel AUROC tables
(markdown); pixel AUROC compares the map average-pooled to 56x56 with the mask at 56x56.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.backbones.base import read_state_dict
from pretrain.backbones.cnn import (
    MOBILENET_V2,
    MOBILENET_V2_BLOCKS,
    MOBILENET_V2_FILE,
    MOBILENET_V2_PACKAGE,
    _package_file,
)
from pretrain.extras import require
from pretrain.preprocess import load_batch, load_image, resize_uint8, to_model_input

CATEGORIES = ("mvtec_ad/bottle", "magnetic_tile/tile")
CANDIDATES = (6, 10, 13, 16, 17)  # stride 8 .. 32
TAP_SETS = [
    (6,), (10,), (13,), (16,), (17,),
    (6, 10, 13), (6, 13, 16), (6, 13, 17), (10, 13, 16), (10, 13, 17), (13, 16, 17),
    (6, 10, 13, 16), (6, 10, 13, 17), (13, 17), (6, 13),
]  # fmt: skip
IMAGES = (".png", ".jpg", ".jpeg", ".bmp")


def roc_auc_score(labels: object, scores: object) -> float:
    """scikit-learn's AUROC (a training/measurement tool: scikit-learn comes with adqc[train])."""
    metrics = require("sklearn.metrics", "train", why="measuring backbone levels")
    return float(metrics.roc_auc_score(labels, scores))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGES)


def _features(net, paths: list[Path]) -> dict[int, torch.Tensor]:
    out: dict[int, list[torch.Tensor]] = {i: [] for i in CANDIDATES}
    for s in range(0, len(paths), 16):
        x = to_model_input(torch.from_numpy(load_batch(paths[s : s + 16], 224)), MOBILENET_V2)
        with torch.inference_mode():
            for i, block in enumerate(net.features[: max(CANDIDATES) + 1]):
                x = block(x)
                if i in out:
                    out[i].append(x)
    return {i: torch.cat(v) for i, v in out.items()}


def _level_maps(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Normalised 1-NN distance maps [N, 224, 224] of test patches against the reference bank."""
    k, c, h, w = ref.shape
    bank = ref.permute(0, 2, 3, 1).reshape(k, h * w, c)
    # Scale: mean 1-NN distance of each reference image's patches to the other references.
    scale = torch.stack(
        [
            torch.cdist(bank[j], torch.cat([bank[:j], bank[j + 1 :]]).reshape(-1, c))
            .min(1)[0]
            .mean()
            for j in range(k)
        ]
    ).mean()
    flat_bank = bank.reshape(-1, c)
    q = test.permute(0, 2, 3, 1).reshape(-1, c)
    d = torch.cat(
        [torch.cdist(q[s : s + 8192], flat_bank).min(1)[0] for s in range(0, len(q), 8192)]
    )
    d = (d / scale).reshape(test.shape[0], 1, h, w)
    return F.interpolate(d, size=(224, 224), mode="bilinear", align_corners=False)[:, 0]


def _mask(root: Path, image: Path, size: int = 56) -> np.ndarray:
    if image.parent.name == "good":
        return np.zeros((size, size), dtype=bool)
    found = sorted((root / "ground_truth" / image.parent.name).glob(image.stem + "_mask.*"))
    if not found:
        raise FileNotFoundError(f"no mask for {image}")
    m = load_image(found[0])[..., :1].repeat(3, axis=2)
    return resize_uint8(m, size)[..., 0] > 127


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--datasets", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "datasets"
    )
    ap.add_argument("--shots", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    net.load_state_dict(
        read_state_dict(_package_file(MOBILENET_V2_PACKAGE, "weights", MOBILENET_V2_FILE))
    )
    net.eval()
    results: dict[tuple[int, ...], list[float]] = {t: [] for t in TAP_SETS}
    pixel: dict[tuple[int, ...], list[float]] = {t: [] for t in TAP_SETS}
    for cat in CATEGORIES:
        root = args.datasets / cat
        t0 = time.time()
        refs = _images(root / "train" / "good")[: args.shots]
        tests, labels = [], []
        for d in sorted((root / "test").iterdir()):
            imgs = _images(d)
            tests += imgs
            labels += [int(d.name != "good")] * len(imgs)
        fr, ft = _features(net, refs), _features(net, tests)
        masks = np.stack([_mask(root, p) for p in tests]).reshape(-1)
        maps = {i: _level_maps(fr[i], ft[i]) for i in CANDIDATES}
        for taps in TAP_SETS:
            amap = torch.stack([maps[i] for i in taps]).mean(0)
            results[taps].append(roc_auc_score(labels, amap.amax(dim=(1, 2)).numpy()))
            small = F.avg_pool2d(amap[:, None], 4)[:, 0].reshape(-1).numpy()
            pixel[taps].append(roc_auc_score(masks, small))
        print(f"# {cat}: {len(refs)} refs, {len(tests)} test images, {time.time() - t0:.0f}s")
    for title, table in (("image AUROC", results), ("pixel AUROC", pixel)):
        print(
            f"\n{title}\n\n| taps (features[i]) | channels | "
            + " | ".join(CATEGORIES)
            + " | mean |"
        )
        print("|---|---|" + "---|" * (len(CATEGORIES) + 1))
        for taps, aucs in table.items():
            chans = "/".join(str(MOBILENET_V2_BLOCKS[i][0]) for i in taps)
            cells = " | ".join(f"{a:.3f}" for a in aucs)
            print(f"| {','.join(map(str, taps))} | {chans} | {cells} | {np.mean(aucs):.3f} |")


if __name__ == "__main__":
    main()
