"""MVTec-layout category folders.

    <category>/train/good/*                               normal images
    <category>/test/good/*                                normal test images (optional)
    <category>/test/<defect>/*                            defective test images
    <category>/ground_truth/<defect>/<stem>_mask.png      binary masks (optional, 255 = defect)

Images are PNG or JPEG. Problems are reported as :class:`DatasetError` naming the folder or
files involved: a missing or empty folder, a mask whose size differs from its image, more
reference shots than there are normal images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
GOOD = "good"

__all__ = [
    "GOOD",
    "IMAGE_SUFFIXES",
    "DatasetError",
    "MVTecCategory",
    "Sample",
    "check_mask_size",
    "list_images",
    "load_mask",
    "load_sample",
]


class DatasetError(ValueError):
    """A dataset folder is missing, empty or inconsistent; the message names the paths."""


@dataclass(frozen=True)
class Sample:
    """One image of a category: ``label`` 0 = normal, 1 = defective; ``mask`` may be None."""

    path: Path
    label: int
    defect: str
    mask: Path | None = None


def list_images(folder: Path) -> list[Path]:
    """Sorted PNG/JPEG files of ``folder``; DatasetError when it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"folder not found: {folder}")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DatasetError(f"no PNG/JPEG images in folder {folder}")
    return files


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def check_mask_size(image: Path, mask: Path) -> None:
    """DatasetError naming both files when the mask's size differs from the image's."""
    isz, msz = _image_size(image), _image_size(mask)
    if isz != msz:
        raise DatasetError(
            f"mask {mask} is {msz[0]}x{msz[1]} but its image {image} is {isz[0]}x{isz[1]}"
        )


def load_mask(path: Path, size: int | None = None) -> np.ndarray:
    """Binary mask as uint8 HxW in {0, 1} (nearest-neighbour resized to ``size`` when given)."""
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if size is not None:
                im = im.resize((size, size), Image.NEAREST)
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    return (arr > 127).astype(np.uint8)


def load_sample(
    image_path: Path, mask_path: Path | None, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 SxSx3, mask uint8 SxS in {0,1}) at the square model size, no crop.

    A missing mask means an all-normal image. The mask must have the image's size.
    """
    from pretrain.preprocess import load_image, resize_uint8

    image = load_image(Path(image_path))
    if mask_path is None:
        return resize_uint8(image, size), np.zeros((size, size), np.uint8)
    mask = load_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} "
            f"is {image.shape[1]}x{image.shape[0]}"
        )
    small = np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.NEAREST))
    return resize_uint8(image, size), (small > 127).astype(np.uint8)


class MVTecCategory:
    """One category folder in the MVTec layout (see the module docstring).

    ``train_good`` lists the normal training images; ``test`` the test samples (normal and
    defective, with their mask paths when the mask exists). A missing ``test/`` folder is allowed
    (a category used only for references); empty folders are errors.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"category folder not found: {self.root}")
        self.name = self.root.name
        self.train_good = list_images(self.root / "train" / GOOD)
        self.test: list[Sample] = []
        test_dir = self.root / "test"
        if test_dir.is_dir():
            defects = sorted(p for p in test_dir.iterdir() if p.is_dir())
            if not defects:
                raise DatasetError(f"no defect-type folders in {test_dir}")
            for folder in defects:
                for path in list_images(folder):
                    if folder.name == GOOD:
                        self.test.append(Sample(path, 0, GOOD))
                        continue
                    mask = self.root / "ground_truth" / folder.name / f"{path.stem}_mask.png"
                    self.test.append(Sample(path, 1, folder.name, mask if mask.is_file() else None))

    def __repr__(self) -> str:
        n_train, n_test = len(self.train_good), len(self.test)
        return f"MVTecCategory({str(self.root)!r}, train_good={n_train}, test={n_test})"

    @property
    def qualified_name(self) -> str:
        """``<dataset>/<category>`` (the parent folder's name and this folder's)."""
        return f"{self.root.parent.name}/{self.name}"

    @property
    def defective(self) -> list[Sample]:
        return [s for s in self.test if s.label == 1]

    @property
    def test_good(self) -> list[Sample]:
        return [s for s in self.test if s.label == 0]

    def references(self, k: int, seed: int | None = None) -> list[Path]:
        """K normal reference images: the first K of train/good, or K random ones with a seed."""
        if k < 1:
            raise DatasetError(f"K must be at least 1, got {k}")
        if k > len(self.train_good):
            raise DatasetError(
                f"K={k} reference images requested but {self.root / 'train' / GOOD} has only "
                f"{len(self.train_good)} normal images"
            )
        if seed is None:
            return self.train_good[:k]
        return random.Random(seed).sample(self.train_good, k)

    def check_masks(self) -> None:
        """Check every existing mask's size against its image (DatasetError on a mismatch)."""
        for s in self.test:
            if s.mask is not None:
                check_mask_size(s.path, s.mask)
