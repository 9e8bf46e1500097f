"""Which images a peer-benchmark row sees: a class, its groups, the first K references of each.

A class is one evaluation category (``evaluation.datasets.load_category``: an
MVTec-layout folder or an ELPV view). Most classes are one group: the first K ``train/good``
images are the references of every test image. ``aitex/fabric`` mixes seven fabrics in one
folder, so it is split into one group per fabric code (the third ``_``-separated token of the
file stem: ``0001_002_03.png`` and ``0001_000_03_2311694-1930c7u.png`` are both fabric 03): each
test image is scored against the first K normal training images of its own fabric. A fabric with
fewer than K training images, or without any test image, is dropped and noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluation.datasets import Category, load_category, subsample_test
from pretrain.data.folders import DatasetError, Sample

#: classes whose test images are scored per group of this key (class name -> key function name)
GROUPED_CLASSES = ("aitex/fabric",)
#: the shipped projector was pretrained on these: its adpretrain rows there are not unseen-class
#: results (a leave-one-dataset-out checkpoint must be given for them)
PRETRAINING_CLASSES = ("magnetic_tile/tile", "bsdata/ballscrew", "deeppcb/pcb")


#: ``--shots all``: every train/good image of a group is a reference (full shot)
ALL_SHOTS = 0


def shots_label(shots: int) -> int | str:
    """How a row names its K: the number, or "all" for full shot."""
    return "all" if shots == ALL_SHOTS else shots


@dataclass
class Group:
    """Test images that share one reference set."""

    name: str
    train_good: list[Path]  # sorted; the first K are the references
    test: list[Sample]

    def references(self, shots: int) -> list[Path]:
        """The first ``shots`` train/good images; ``ALL_SHOTS``: every one (full shot)."""
        if shots == ALL_SHOTS:
            return list(self.train_good)
        if shots > len(self.train_good):
            raise DatasetError(
                f"{shots} shots asked but group {self.name or '(all)'} has only "
                f"{len(self.train_good)} train/good images"
            )
        return self.train_good[:shots]


@dataclass
class BenchClass:
    name: str
    spec: str
    groups: list[Group]
    notes: list[str] = field(default_factory=list)

    @property
    def seen_in_pretraining(self) -> bool:
        return self.name in PRETRAINING_CLASSES

    @property
    def test(self) -> list[Sample]:
        """Every test sample, in group order (the order of every score array)."""
        return [s for g in self.groups for s in g.test]


def fabric_code(path: Path) -> str:
    """AITEX fabric code: the third '_'-separated token of the stem ('0001_002_03' -> '03')."""
    parts = Path(path).stem.split("_")
    if len(parts) < 3:
        raise DatasetError(f"cannot read a fabric code from {path.name!r} (expected a_b_code...)")
    return parts[2]


def group_by_code(category: Category, shots: int) -> tuple[list[Group], list[str]]:
    """One group per fabric code with at least ``shots`` normal training images and a test image."""
    train: dict[str, list[Path]] = {}
    for p in category.train_good:
        train.setdefault(fabric_code(p), []).append(p)
    test: dict[str, list[Sample]] = {}
    for s in category.test:
        test.setdefault(fabric_code(s.path), []).append(s)
    groups, notes = [], []
    for code in sorted(set(train) | set(test)):
        refs, samples = sorted(train.get(code, [])), test.get(code, [])
        if len(refs) < (shots or 2) or not samples:
            notes.append(
                f"fabric {code} dropped: {len(refs)} train/good images (need {shots}), "
                f"{len(samples)} test images"
            )
            continue
        groups.append(Group(f"fabric {code}", refs, samples))
    if not groups:
        raise DatasetError(f"{category.name}: no fabric code has {shots} training images")
    return groups, notes


def load_bench_class(spec: str, shots: int) -> BenchClass:
    """The class named by ``spec`` split into its reference groups for K = ``shots``."""
    category = load_category(spec)
    if category.name in GROUPED_CLASSES:
        groups, notes = group_by_code(category, shots)
        return BenchClass(category.name, spec, groups, notes)
    group = Group("", list(category.train_good), list(category.test))
    group.references(shots)  # fail early with a clear message
    return BenchClass(category.name, spec, [group])


def capped(bc: BenchClass, max_test: int | None) -> BenchClass:
    """The class with its test set capped (stratified per class, then split back per group)."""
    keep = {s.path for s in subsample_test(bc.test, max_test, seed=0)}
    for g in bc.groups:
        g.test = [s for s in g.test if s.path in keep]
    bc.groups = [g for g in bc.groups if g.test]
    return bc
