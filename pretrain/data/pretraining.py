"""The multi-dataset pretraining set: several MVTec-layout categories, one class each.

Per category (class):

* references: ``references_per_class`` random images of ``train/good`` (at least max(shots)),
  encoded once by the trainer; K is re-drawn per batch from ``shots`` (default {1, 4, 8}).
* training images: ``test/good`` (normal), ``test/<defect>`` with a mask (real defects; defect
  images without a mask are skipped and counted), and the remaining ``train/good`` images
  ("bases"). A fraction ``synthetic_ratio`` of the bases receives a fresh synthetic anomaly each
  time it is drawn (:mod:`pretrain.data.synthetic`); the other bases are normal samples.
  Reference images are never training images, so no query is matched against itself.
* validation: a fraction ``val_fraction`` of each class's training images, stratified by kind
  (normal / defect / synthetic), held out for checkpoint selection. Validation samples are
  deterministic (fixed synthetic anomalies and augmentations).

Samples are (image, mask, class); the trainer makes two photometric views of each batch that
share the masks (:class:`pretrain.data.augment.PhotometricAugment`, batched).
Batches hold one class each (:class:`ClassBatchSampler`), so one reference pool serves a batch.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pretrain.data.folders import DatasetError, MVTecCategory, load_sample
from pretrain.data.synthetic import SyntheticAnomalies

DEFAULT_SHOTS = (1, 4, 8)
KINDS = ("normal", "defect", "synthetic")

__all__ = [
    "DEFAULT_SHOTS",
    "ClassBatchSampler",
    "ImageCache",
    "PretrainingClass",
    "PretrainingDataset",
    "PretrainingSet",
    "TrainItem",
    "draw_shots",
]


@dataclass(frozen=True)
class TrainItem:
    """One training sample: ``kind`` is "normal", "defect" (real, masked) or "synthetic"."""

    cls: int
    path: Path
    mask: Path | None
    kind: str


@dataclass
class PretrainingClass:
    name: str
    root: Path
    references: list[Path]
    train: list[TrainItem]
    val: list[TrainItem]
    skipped_unmasked: int = 0

    def counts(self, split: str) -> dict[str, int]:
        items = self.train if split == "train" else self.val
        return {k: sum(1 for it in items if it.kind == k) for k in KINDS}


class ImageCache:
    """Thread-safe memo of (image, mask) at the model size, keyed by file paths."""

    def __init__(self, size: int):
        self.size = size
        self._data: dict[tuple[Path, Path | None], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, mask: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        key = (path, mask)
        hit = self._data.get(key)
        if hit is None:
            image, m = load_sample(path, mask, self.size)
            hit = (np.array(image, copy=True), np.array(m, copy=True))  # writable, owned
            with self._lock:
                self._data[key] = hit
        return hit

    def preload(self, keys: Sequence[tuple[Path, Path | None]], threads: int = 2) -> None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda k: self.get(*k), keys))

    def __len__(self) -> int:
        return len(self._data)


def draw_shots(rng: random.Random, shots: Sequence[int], available: int) -> int:
    """Draw K from ``shots``; DatasetError when K exceeds the available normal images."""
    k = rng.choice(list(shots))
    if k > available:
        raise DatasetError(f"K={k} reference shots requested but only {available} normal images")
    return k


def _split_counts(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


class PretrainingSet:
    """Classes, references, train/val items and a shared image cache (see the module doc)."""

    def __init__(
        self,
        roots: Sequence[Path | str],
        image_size: int = 224,
        synthetic_ratio: float = 0.5,
        max_images_per_class: int | None = None,
        val_fraction: float = 0.1,
        references_per_class: int = 32,
        shots: Sequence[int] = DEFAULT_SHOTS,
        seed: int = 0,
        synthetic: SyntheticAnomalies | None = None,
    ):
        if not roots:
            raise DatasetError("no pretraining category folders given")
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.image_size = image_size
        self.synthetic_ratio = synthetic_ratio
        self.max_images_per_class = max_images_per_class
        self.val_fraction = val_fraction
        self.shots = tuple(sorted(set(shots)))
        self.seed = seed
        self.synthetic = synthetic or SyntheticAnomalies()
        self.cache = ImageCache(image_size)
        self.classes: list[PretrainingClass] = []
        names: set[str] = set()
        for index, root in enumerate(roots):
            cat = MVTecCategory(root)
            name = cat.qualified_name
            if name in names:
                raise DatasetError(f"category {root} is given twice")
            names.add(name)
            self.classes.append(self._build_class(index, cat, references_per_class))
        self.textures = [r for c in self.classes for r in c.references]

    def _build_class(self, index: int, cat: MVTecCategory, n_refs: int) -> PretrainingClass:
        rng = random.Random(f"{self.seed}/{cat.qualified_name}")
        need = max(self.shots)
        normals = list(cat.train_good)
        if len(normals) < need:
            raise DatasetError(
                f"K={need} reference shots need {need} normal images but "
                f"{cat.root / 'train' / 'good'} has only {len(normals)}"
            )
        rng.shuffle(normals)
        n_refs = max(need, min(n_refs, len(normals)))
        refs, bases = normals[:n_refs], normals[n_refs:]
        cat.check_masks()
        items: list[TrainItem] = [TrainItem(index, s.path, None, "normal") for s in cat.test_good]
        skipped = 0
        for s in cat.defective:
            if s.mask is None:
                skipped += 1
            else:
                items.append(TrainItem(index, s.path, s.mask, "defect"))
        n_syn = round(self.synthetic_ratio * len(bases))
        items += [TrainItem(index, p, None, "synthetic") for p in bases[:n_syn]]
        items += [TrainItem(index, p, None, "normal") for p in bases[n_syn:]]
        rng.shuffle(items)
        if self.max_images_per_class is not None:
            items = items[: self.max_images_per_class]
        if not items:
            raise DatasetError(f"category {cat.root} has no training images besides references")
        train: list[TrainItem] = []
        val: list[TrainItem] = []
        for kind in KINDS:
            group = [it for it in items if it.kind == kind]
            n_val = _split_counts(len(group), self.val_fraction)
            val += group[:n_val]
            train += group[n_val:]
        return PretrainingClass(cat.qualified_name, cat.root, refs, train, val, skipped)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def dataset(self, split: str) -> PretrainingDataset:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        items = [it for c in self.classes for it in (c.train if split == "train" else c.val)]
        return PretrainingDataset(self, items, deterministic=split == "val")

    def preload(self, threads: int = 2) -> None:
        """Decode and resize every image once (references, textures, train and val items)."""
        keys = [(p, None) for c in self.classes for p in c.references]
        keys += [(it.path, it.mask) for c in self.classes for it in c.train + c.val]
        self.cache.preload(keys, threads)

    def summary(self) -> dict:
        """JSON-friendly description of the data, stored in the checkpoint and the model card."""
        classes = []
        for c in self.classes:
            classes.append(
                {
                    "name": c.name,
                    "root": str(c.root),
                    "references": len(c.references),
                    "train": c.counts("train"),
                    "val": c.counts("val"),
                    "skipped_defects_without_mask": c.skipped_unmasked,
                }
            )
        return {
            "classes": classes,
            "image_size": self.image_size,
            "synthetic_ratio": self.synthetic_ratio,
            "synthetic_generators": list(self.synthetic.generators),
            "max_images_per_class": self.max_images_per_class,
            "val_fraction": self.val_fraction,
            "shots": list(self.shots),
            "seed": self.seed,
            "n_train": sum(len(c.train) for c in self.classes),
            "n_val": sum(len(c.val) for c in self.classes),
        }


class PretrainingDataset(Dataset):
    """Items of one split -> dict(image: uint8 [S,S,3], mask: uint8 [S,S] in {0,1}, cls: int).

    Randomness (synthetic anomaly, texture choice) is seeded by
    (set seed, epoch, index), so runs and resumed runs are reproducible with any worker count;
    a deterministic (validation) dataset ignores the epoch.
    """

    def __init__(self, pset: PretrainingSet, items: list[TrainItem], deterministic: bool):
        self.pset = pset
        self.items = items
        self.deterministic = deterministic
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def classes(self) -> list[int]:
        return [it.cls for it in self.items]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        epoch = 0 if self.deterministic else self.epoch + 1
        stream = [self.pset.seed, epoch, index, int(self.deterministic)]
        rng = np.random.default_rng(stream)
        image, mask = self.pset.cache.get(item.path, item.mask)
        if item.kind == "synthetic":
            texture = None
            if len(self.pset.textures) > 1:
                other = self.pset.textures[int(rng.integers(0, len(self.pset.textures)))]
                texture = self.pset.cache.get(other)[0]
            image, mask = self.pset.synthetic(image, rng, texture)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "cls": item.cls,
        }


class ClassBatchSampler(Sampler[list[int]]):
    """Batches of indices of one class each; order reshuffled per epoch when ``shuffle``."""

    def __init__(
        self, classes: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.classes = list(classes)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._by_class: dict[int, list[int]] = {}
        for i, c in enumerate(self.classes):
            self._by_class.setdefault(c, []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        out: list[list[int]] = []
        for c in sorted(self._by_class):
            idx = list(self._by_class[c])
            if self.shuffle:
                rng.shuffle(idx)
            out += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return sum(-(-len(v) // self.batch_size) for v in self._by_class.values())
