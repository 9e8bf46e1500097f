"""Evaluation categories: MVTec-layout folders and the solar-cell images of ``elpv-dataset``.

A category is anything with ``name``, ``train_good`` (sorted normal image paths) and ``test``
(a list of :class:`pretrain.data.folders.Sample`). MVTec-layout folders are read with
:class:`pretrain.data.folders.MVTecCategory`.

ELPV (``pip install elpv-dataset``: 2,624 electroluminescence images of solar cells, 300x300,
image-level labels only) is read in place as another unseen class, without copying anything:

- ``elpv`` (all cells), ``elpv:mono`` or ``elpv:poly`` (one cell type: monocrystalline cells
  look nothing like polycrystalline ones, so a K-shot pool should come from one type);
- normal = defect probability 0; defective = probability > 0 (1/3, 2/3 and 1);
- train/good = the first ``ELPV_TRAIN_FRACTION`` (20 %) of the normal cells sorted by file name;
  test = the remaining normal cells + every defective cell. No masks (pixel metrics are null).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.data.folders import DatasetError, MVTecCategory, Sample

ELPV_PREFIX = "elpv"
ELPV_TYPES = ("mono", "poly")
ELPV_TRAIN_FRACTION = 0.2


@dataclass
class Category:
    """A resolved evaluation category (the MVTec layout or a view of a packaged dataset)."""

    name: str
    root: str
    train_good: list[Path]
    test: list[Sample] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a pixel mask."""
        return all_defects_masked(self.test)


def all_defects_masked(samples: list[Sample]) -> bool:
    """True when there are defective samples and every one of them has a pixel mask."""
    defective = [s for s in samples if s.label == 1]
    return bool(defective) and all(s.mask is not None for s in defective)


def elpv_data_dir() -> Path:
    """The installed ``elpv_dataset/data`` folder (labels.csv + images/)."""
    try:
        import elpv_dataset
    except ImportError as exc:
        raise DatasetError(
            "the ELPV solar-cell images come from the PyPI package elpv-dataset: "
            "pip install elpv-dataset==1.0.0.post1 (`make setup` installs it)"
        ) from exc
    data = Path(elpv_dataset.__file__).resolve().parent / "data"
    if not (data / "labels.csv").is_file():
        raise DatasetError(f"elpv-dataset is installed but {data / 'labels.csv'} is missing")
    return data


def read_elpv_labels(data: Path) -> list[tuple[Path, float, str]]:
    """(image path, defect probability, cell type) rows of labels.csv."""
    rows = []
    for line_no, line in enumerate((data / "labels.csv").read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DatasetError(f"{data / 'labels.csv'}:{line_no}: expected 3 columns: {line!r}")
        rows.append((data / parts[0], float(parts[1]), parts[2]))
    return rows


def load_elpv(spec: str = ELPV_PREFIX, train_fraction: float = ELPV_TRAIN_FRACTION) -> Category:
    """The ELPV view described in the module docstring; spec 'elpv', 'elpv:mono', 'elpv:poly'."""
    _, _, kind = spec.partition(":")
    if kind and kind not in ELPV_TYPES:
        raise DatasetError(f"unknown ELPV cell type {kind!r} in {spec!r}; use mono or poly")
    rows = [r for r in read_elpv_labels(elpv_data_dir()) if not kind or r[2] == kind]
    rows.sort(key=lambda r: r[0].name)
    normal = [p for p, prob, _ in rows if prob == 0.0]
    n_train = max(1, int(round(train_fraction * len(normal))))
    test = [Sample(p, 0, "good") for p in normal[n_train:]]
    test += [Sample(p, 1, f"p{prob:.2f}") for p, prob, _ in rows if prob > 0.0]
    test.sort(key=lambda s: s.path.name)
    name = f"elpv/{kind or 'all'}"
    return Category(name, spec, normal[:n_train], test)


def load_category(spec: str | Path) -> Category:
    """An MVTec-layout folder path, or an ELPV spec ('elpv', 'elpv:mono', 'elpv:poly')."""
    text = str(spec)
    is_elpv = text == ELPV_PREFIX or text.startswith(ELPV_PREFIX + ":")
    if is_elpv and not Path(text).exists():  # a real folder of that name wins
        return load_elpv(text)
    cat = MVTecCategory(Path(text))
    if not cat.test:
        raise DatasetError(f"no test images under {cat.root / 'test'}: nothing to evaluate")
    return Category(cat.qualified_name, str(cat.root), list(cat.train_good), list(cat.test))


def subsample_test(samples: list[Sample], max_test: int | None, seed: int = 0) -> list[Sample]:
    """At most ``max_test`` test samples, stratified by label, deterministic (seeded).

    Keeps the normal/defective ratio; the order stays sorted by path.
    """
    if max_test is None or len(samples) <= max_test:
        return list(samples)
    rng = random.Random(seed)
    out: list[Sample] = []
    for label in (0, 1):
        group = [s for s in samples if s.label == label]
        k = round(max_test * len(group) / len(samples))
        out += rng.sample(group, min(len(group), max(k, 1 if group else 0)))
    return sorted(out, key=lambda s: str(s.path))
