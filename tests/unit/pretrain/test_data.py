"""MVTec-layout folders, the pretraining set and the two-view augmentation (generated images)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data import (
    ClassBatchSampler,
    DatasetError,
    MVTecCategory,
    PhotometricAugment,
    PretrainingSet,
    draw_shots,
    load_sample,
)
from pretrain.data.toy import write_toy_category

# ----------------------------------------------------------------------------- folders


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_category_lists_images_and_masks(tmp_path, fmt):
    root = write_toy_category(tmp_path / "ds" / "cat", n_train=5, defects={"a": 2, "b": 1}, fmt=fmt)
    cat = MVTecCategory(root)
    assert cat.name == "cat" and cat.qualified_name == "ds/cat"
    assert len(cat.train_good) == 5
    assert len(cat.test_good) == 3 and len(cat.defective) == 3
    assert {s.defect for s in cat.defective} == {"a", "b"}
    assert all(
        s.mask is not None and s.mask.name == f"{s.path.stem}_mask.png" for s in cat.defective
    )
    image, mask = load_sample(cat.defective[0].path, cat.defective[0].mask, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1} and mask.sum() > 0


def test_masks_are_optional(tmp_path):
    root = write_toy_category(tmp_path / "cat", masks=False)
    cat = MVTecCategory(root)
    assert all(s.mask is None for s in cat.defective)
    _, mask = load_sample(cat.defective[0].path, None, 16)
    assert mask.sum() == 0


def test_mask_size_mismatch_names_both_files(tmp_path):
    root = write_toy_category(tmp_path / "cat", defects={"a": 1})
    mask_path = root / "ground_truth" / "a" / "000_mask.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(mask_path)
    cat = MVTecCategory(root)
    image_path = cat.defective[0].path
    with pytest.raises(DatasetError) as err:
        load_sample(image_path, mask_path, 16)
    assert str(mask_path) in str(err.value) and str(image_path) in str(err.value)
    with pytest.raises(DatasetError, match="000_mask.png"):
        cat.check_masks()


def test_empty_or_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        MVTecCategory(tmp_path / "nope")
    root = write_toy_category(tmp_path / "cat")
    for p in (root / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=str(root / "train" / "good")):
        MVTecCategory(root)
    root2 = write_toy_category(tmp_path / "cat2")
    (root2 / "test" / "empty_defect").mkdir()
    with pytest.raises(DatasetError, match="empty_defect"):
        MVTecCategory(root2)


def test_too_many_shots_is_a_clear_error(tmp_path):
    cat = MVTecCategory(write_toy_category(tmp_path / "cat", n_train=3))
    assert len(cat.references(3)) == 3
    assert cat.references(2, seed=1) == cat.references(2, seed=1)
    with pytest.raises(DatasetError, match="K=4.*only 3"):
        cat.references(4)
    with pytest.raises(DatasetError, match="K=8"):
        PretrainingSet([cat.root], image_size=32)
    with pytest.raises(DatasetError, match="K=4"):
        draw_shots(random.Random(0), [4], available=3)


# ----------------------------------------------------------------------------- pretraining set


def _two_classes(tmp_path, n_train=20):
    a = write_toy_category(tmp_path / "d1" / "a", n_train=n_train, defects={"x": 6}, style=0)
    b = write_toy_category(
        tmp_path / "d2" / "b", n_train=n_train, defects={"y": 4}, style=1, fmt="jpg", seed=3
    )
    return [a, b]


def test_pretraining_set_splits_and_summary(tmp_path):
    pset = PretrainingSet(
        _two_classes(tmp_path), image_size=32, synthetic_ratio=0.5, val_fraction=0.2,
        references_per_class=8, seed=0,
    )  # fmt: skip
    assert pset.class_names == ["d1/a", "d2/b"]
    for c in pset.classes:
        assert len(c.references) == 8
        train_paths = {it.path for it in c.train}
        val_paths = {it.path for it in c.val}
        assert not train_paths & val_paths
        assert not set(c.references) & (train_paths | val_paths)  # a reference is never a query
        assert c.counts("val")["defect"] >= 1 and c.counts("val")["synthetic"] >= 1
        # 12 bases: 6 synthetic, 6 normal; + 3 test/good normals
        total = {k: c.counts("train")[k] + c.counts("val")[k] for k in c.counts("train")}
        assert total["synthetic"] == 6 and total["normal"] == 9
    summary = pset.summary()
    assert summary["n_train"] + summary["n_val"] == sum(
        len(c.train) + len(c.val) for c in pset.classes
    )
    assert summary["classes"][0]["name"] == "d1/a"


def test_max_images_per_class_and_determinism(tmp_path):
    roots = _two_classes(tmp_path)
    p1 = PretrainingSet(roots, image_size=32, max_images_per_class=10, references_per_class=8)
    p2 = PretrainingSet(roots, image_size=32, max_images_per_class=10, references_per_class=8)
    for c1, c2 in zip(p1.classes, p2.classes, strict=True):
        assert len(c1.train) + len(c1.val) == 10
        assert c1.train == c2.train and c1.references == c2.references


def test_samples_are_reproducible_per_epoch(tmp_path):
    pset = PretrainingSet(
        _two_classes(tmp_path), image_size=32, synthetic_ratio=1.0, references_per_class=8
    )
    ds = pset.dataset("train")
    kinds = [it.kind for it in ds.items]
    i = kinds.index("synthetic")
    sample = ds[i]
    assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (32, 32) and sample["mask"].sum() > 0
    assert torch.equal(ds[i]["image"], sample["image"])  # seeded by (seed, epoch, index)
    j = kinds.index("defect")
    assert ds[j]["mask"].sum() > 0
    # train samples change with the epoch, validation samples never do
    ds.set_epoch(1)
    again = ds[i]
    assert not torch.equal(again["mask"], sample["mask"]) or not torch.equal(
        again["image"], sample["image"]
    )
    val = pset.dataset("val")
    v1 = val[0]
    val.set_epoch(5)
    assert torch.equal(v1["image"], val[0]["image"]) and torch.equal(v1["mask"], val[0]["mask"])


def test_class_batch_sampler_groups_by_class():
    classes = [0] * 7 + [1] * 5
    sampler = ClassBatchSampler(classes, batch_size=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert all(len({classes[i] for i in b}) == 1 for b in batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(ClassBatchSampler(classes, 3, shuffle=False)) == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
        [7, 8, 9],
        [10, 11],
    ]


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_photometric_only():
    images = torch.zeros(16, 40, 40, 3, dtype=torch.uint8)
    images[:, 10:20, 10:20] = torch.tensor([250, 40, 40], dtype=torch.uint8)
    images[:, 25:, 25:] = 30
    aug = PhotometricAugment(40)
    v1, v2 = aug.views(images, torch.Generator().manual_seed(0))
    assert v1.shape == images.shape and v1.dtype == torch.uint8
    assert not torch.equal(v1, v2)  # independent draws
    assert len({v1[i].numpy().tobytes() for i in range(16)}) > 8  # per-image parameters
    w1, _ = aug.views(images, torch.Generator().manual_seed(0))
    assert torch.equal(v1, w1)  # reproducible with a generator
    # geometry unchanged: the bright square stays the brightest region, no flip or crop
    for v in torch.cat([v1, v2]):
        gray = v.float().mean(-1)
        assert gray[12:18, 12:18].mean() > gray[28:, 28:].mean()
        assert gray[12:18, 12:18].mean() > gray[:8, 30:].mean()
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(1, 8, 8, 3))


def test_augmentation_matches_torchvision_for_single_ops():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 24, 24, 3), dtype=torch.uint8, generator=g)
    x = images.permute(0, 3, 1, 2).float() / 255
    f = torch.tensor([0.7, 1.3, 0.9, 1.2])
    from pretrain.data import augment as A

    for ours, theirs in (
        (A._brightness, TF.adjust_brightness),
        (A._contrast, TF.adjust_contrast),
        (A._saturation, TF.adjust_saturation),
    ):
        got = ours(x, f)
        want = torch.stack([theirs(x[i], float(f[i])) for i in range(4)])
        assert torch.allclose(got, want, atol=1e-4), ours.__name__
    # hue 0 is the identity; a blur keeps the mean
    assert torch.allclose(A._hue(x, torch.zeros(4)), x, atol=1e-4)
    blurred = A._blur(x, torch.full((4,), 1.5), 5)
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.02)
