"""``adqc eval``: one category, one kind of features, one detector, K shots -> metrics JSON.

Protocol (docs/EVALUATION.md):
- images are resized to ``image_size`` x ``image_size`` (default: the backbone's, 224) without
  cropping, so long thin parts stay whole; masks are resized with nearest neighbour;
- K shots = the first K images of train/good (sorted by file name); ``all`` = every one of them;
- ``raw`` features: the backbone's levels as they are (the baseline); ``adpretrain``: each level's
  residual against the K-shot reference pool, through the pretrained projector; ``residual``
  (ablation): the residuals without the projector;
- the reference pool is the K shots; with ``all`` shots it is capped at the first ``pool_cap``
  (8) images so the residual search stays bounded (memory and time linear in the pool);
- the detector's memory (PatchCore bank, PaDiM statistics) is fitted on the same K images. For
  residual features a reference image would match itself in the pool (residual exactly 0), so
  each pool image's residual is taken against the pool *without it* (leave-one-out), which is
  what a test image sees: a pool of other normal images;
- FeatureNorm has nothing to fit: it only needs the pool.
Nothing is tuned on test images: every hyper-parameter is fixed in code and documented.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evaluation import metrics as M
from evaluation.datasets import (
    Category,
    all_defects_masked,
    load_category,
    subsample_test,
)
from pretrain.data.folders import DatasetError, Sample, load_sample
from pretrain.detectors import check_supported, image_scores, make_detector

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_POOL_CAP = 8


def parse_shots(value: str | int | None) -> int | None:
    """'all' (or None) -> None; otherwise a positive integer."""
    if value is None or str(value).strip().lower() == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"--shots must be a positive integer or 'all', got {value!r}") from None
    if k < 1:
        raise ValueError(f"--shots must be at least 1, got {k}")
    return k


def shots_label(shots: int | None) -> str:
    return "all" if shots is None else str(shots)


@dataclass
class EvalConfig:
    category: str
    features: str = "adpretrain"
    method: str = "featurenorm"
    shots: int | None = 8  # None = every train/good image
    backbone: str = DEFAULT_BACKBONE
    checkpoint: str | None = None  # None: the shipped checkpoint of the backbone
    weights: str | None = None  # backbone weights file (None: the packaged/default source)
    image_size: int | None = None  # None: the backbone's input size
    pool_cap: int = DEFAULT_POOL_CAP
    max_test: int | None = None  # None: every test image
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        check_supported(self.method, self.features)
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"shots must be at least 1, got {self.shots}")
        if self.image_size is not None and self.image_size < 32:
            raise ValueError(f"image size must be at least 32, got {self.image_size}")
        if self.pool_cap < 1:
            raise ValueError("pool_cap must be at least 1")


# ----------------------------------------------------------------------------------- model


@dataclass
class LoadedModel:
    model: Any  # pretrain.model.FeatureModel
    checkpoint: dict[str, Any]  # path, model_id, trained (empty without a projector)

    @property
    def spec(self) -> Any:  # BackboneSpec
        return self.model.spec


def load_model(cfg: EvalConfig) -> LoadedModel:
    """The backbone (+ projector for adpretrain features) for ``cfg``."""
    from pretrain.backbones import load_backbone
    from pretrain.model import FeatureModel

    if cfg.features == "adpretrain":
        from pretrain.checkpoint import default_checkpoint, load_feature_model

        path = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint(cfg.backbone)
        model = load_feature_model(
            cfg.backbone, checkpoint=path, weights=cfg.weights, device=cfg.device
        )
        info = {
            "path": str(path),
            "model_id": model.model_id,
            "trained": model.checkpoint.trained,
        }
    else:
        backbone = load_backbone(cfg.backbone, weights=cfg.weights)
        model = FeatureModel(backbone, None, device=cfg.device)
        info = {}
    return LoadedModel(model, info)


# -------------------------------------------------------------------------------- features


@dataclass
class FeatureSet:
    """Features of one category for one (features kind, K): what every detector needs."""

    kind: str
    shots: int | None
    image_size: int
    train: list[Tensor] | None  # per level [N_train, C, h, w]; None when not computed
    test: list[Tensor]  # per level [N_test, C, h, w]
    samples: list[Sample]
    masks: np.ndarray | None  # [N_test, S, S] bool when every defective image has a mask
    n_train: int
    n_pool: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


class _NoProgress:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Any]:
    """A rich progress display (or a silent stand-in)."""
    if not enabled:
        yield _NoProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as p:
        yield p


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _raw(model, images: np.ndarray) -> list[Tensor]:
    """uint8 [B,S,S,3] -> backbone features per level, on the CPU."""
    with torch.inference_mode():
        return [f.float().cpu() for f in model.raw(model.preprocess(torch.from_numpy(images)))]


def _transform(model, raw: Sequence[Tensor], pool, kind: str) -> list[Tensor]:
    """raw -> residual (-> projected) for kind 'residual' / 'adpretrain'."""
    from pretrain.residual import pool_residuals

    if kind == "raw":
        return list(raw)
    device = model.device
    with torch.inference_mode():
        res = pool_residuals([f.to(device) for f in raw], pool.to(device))
        if kind == "adpretrain":
            res = model.projector(res)
        return [f.float().cpu() for f in res]


def _cat(parts: list[list[Tensor]]) -> list[Tensor]:
    return [torch.cat([p[level] for p in parts], dim=0) for level in range(len(parts[0]))]


@dataclass
class RawFeatures:
    """Backbone features of one category at one image size, shared by every (kind, K, method)."""

    category: Category
    image_size: int
    train_paths: list[Path]
    train: list[Tensor]  # per level [N_train, C, h, w]
    test: list[Tensor]  # per level [N_test, C, h, w]
    samples: list[Sample]
    masks: np.ndarray | None  # [N_test, S, S] bool when every defective image has a mask
    seconds: float
    notes: list[str] = field(default_factory=list)


def chosen_test_samples(
    category: Category, max_test: int | None, seed: int
) -> tuple[list[Sample], list[str]]:
    """The category's test samples, subsampled to ``max_test`` (stratified, seeded), and the
    note that says so when they were."""
    samples = subsample_test(category.test, max_test, seed)
    if len(samples) == len(category.test):
        return samples, []
    note = (
        f"test set subsampled to {len(samples)} of {len(category.test)} images "
        f"(stratified by label, seed {seed})"
    )
    return samples, [note]


def raw_features(
    lm: LoadedModel,
    category: Category,
    image_size: int,
    n_train: int | None,
    max_test: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    show_progress: bool = True,
) -> RawFeatures:
    """Backbone features of the first ``n_train`` train/good images (None: all) and the test set."""
    from pretrain.preprocess import load_batch

    t0 = time.perf_counter()
    model = lm.model
    train_paths = list(category.train_good)
    if n_train is not None:
        if n_train > len(train_paths):
            raise DatasetError(
                f"--shots {n_train} but {category.name} has only {len(train_paths)} "
                f"train/good images"
            )
        train_paths = train_paths[:n_train]
    samples, notes = chosen_test_samples(category, max_test, seed)
    with progress_bar(show_progress) as prog:
        task = prog.add_task(f"{category.name}: train images", total=len(train_paths))
        train_parts = []
        for sl in _batches(len(train_paths), batch_size):
            train_parts.append(_raw(model, load_batch(train_paths[sl], image_size)))
            prog.advance(task, sl.stop - sl.start)
        task = prog.add_task(f"{category.name}: test images", total=len(samples))
        test_parts, mask_parts = [], []
        for sl in _batches(len(samples), batch_size):
            loaded = [load_sample(s.path, s.mask, image_size) for s in samples[sl]]
            images = np.stack([im for im, _ in loaded])
            mask_parts.append(np.stack([m for _, m in loaded]).astype(bool))
            test_parts.append(_raw(model, images))
            prog.advance(task, sl.stop - sl.start)
    has_masks = all_defects_masked(samples)
    return RawFeatures(
        category=category,
        image_size=image_size,
        train_paths=train_paths,
        train=_cat(train_parts),
        test=_cat(test_parts),
        samples=samples,
        masks=np.concatenate(mask_parts) if has_masks else None,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )


def feature_set(
    lm: LoadedModel,
    raw: RawFeatures,
    kind: str,
    shots: int | None,
    pool_cap: int = DEFAULT_POOL_CAP,
    need_train: bool = True,
    batch_size: int = 16,
    show_progress: bool = True,
) -> FeatureSet:
    """Train (K shots) and test features of one kind from the category's backbone features."""
    from pretrain.residual import ReferencePool, leave_one_out_residuals

    t0 = time.perf_counter()
    model = lm.model
    n_train = len(raw.train_paths) if shots is None else shots
    if n_train > len(raw.train_paths):
        raise ValueError(f"{shots} shots asked, {len(raw.train_paths)} train images extracted")
    n_pool = min(n_train, pool_cap) if shots is None else n_train
    notes = list(raw.notes)
    if kind != "raw" and n_train > n_pool:
        notes.append(f"reference pool capped at the first {n_pool} of {n_train} train/good images")
    train_raw = [f[:n_train] for f in raw.train]
    if kind == "raw":
        train = train_raw if need_train else None
        test = raw.test
    else:
        if need_train and n_pool < 2:
            raise ValueError(
                "residual features of the reference images need at least 2 shots (each "
                "reference is matched against the others); use --shots 2 or more, or "
                "--detector featurenorm"
            )
        pool_feats = [f[:n_pool] for f in train_raw]
        pool = ReferencePool.from_features(pool_feats)
        n_test = len(raw.samples)
        with progress_bar(show_progress) as prog:
            total = (n_train if need_train else 0) + n_test
            task = prog.add_task(f"{raw.category.name}: {kind} features", total=total)
            train = None
            if need_train:
                projector = model.projector if kind == "adpretrain" else None
                device = model.device
                loo = leave_one_out_residuals([f.to(device) for f in pool_feats], projector)
                parts = [[f.float().cpu() for f in loo]]  # the pool images, leave-one-out
                prog.advance(task, n_pool)
                for sl in _batches(n_train - n_pool, batch_size):
                    sl = slice(sl.start + n_pool, sl.stop + n_pool)
                    parts.append(_transform(model, [f[sl] for f in train_raw], pool, kind))
                    prog.advance(task, sl.stop - sl.start)
                train = _cat(parts)
            test_parts = []
            for sl in _batches(n_test, batch_size):
                test_parts.append(_transform(model, [f[sl] for f in raw.test], pool, kind))
                prog.advance(task, sl.stop - sl.start)
            test = _cat(test_parts)
    return FeatureSet(
        kind=kind,
        shots=shots,
        image_size=raw.image_size,
        train=train,
        test=test,
        samples=raw.samples,
        masks=raw.masks,
        n_train=n_train,
        n_pool=n_pool if kind != "raw" else 0,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )


# --------------------------------------------------------------------------------- scoring


@dataclass
class MethodOutput:
    """Scores and maps of one detector on one FeatureSet, and its metrics."""

    method: str
    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N,S,S] float32
    metrics: dict[str, Any]
    fit_seconds: float
    score_seconds: float
    detector_info: dict[str, Any]


def run_method(
    fs: FeatureSet, method: str, batch_size: int = 16, show_progress: bool = True
) -> MethodOutput:
    """Fit ``method`` on the FeatureSet's train features, score its test set, compute metrics."""
    det = make_detector(method)
    t0 = time.perf_counter()
    if method != "featurenorm":
        if fs.train is None:
            raise ValueError(f"{method} needs train features (extract with need_train=True)")
        det.fit(fs.train)
    t1 = time.perf_counter()
    n = len(fs.samples)
    maps = np.empty((n, fs.image_size, fs.image_size), dtype=np.float32)
    with progress_bar(show_progress) as prog:
        task = prog.add_task(f"scoring ({method})", total=n)
        for sl in _batches(n, batch_size):
            with torch.inference_mode():
                m = det.anomaly_maps([f[sl] for f in fs.test], fs.image_size)
            maps[sl] = m.numpy()
            prog.advance(task, sl.stop - sl.start)
    scores = image_scores(torch.from_numpy(maps)).numpy().astype(np.float64)
    t2 = time.perf_counter()
    out = detection_metrics(scores, fs.labels, maps, fs.masks)
    return MethodOutput(method, scores, maps, out, t1 - t0, t2 - t1, det.info())


def detection_metrics(
    scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray | None
) -> dict[str, Any]:
    """Image metrics, and pixel metrics where every defective image has a mask (else None)."""
    out = M.image_metrics(scores, labels)
    if masks is not None:
        out.update(M.pixel_metrics(maps, masks))
    else:
        out.update({"pixel_auroc": None, "pixel_ap": None, "pixel_f1_max": None, "aupro": None})
    return out


# ------------------------------------------------------------------------------ the command


def _versions() -> dict[str, str]:
    return {
        "adqc": importlib.metadata.version("adqc"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


#: the metrics of an OUT.json document, in its order
METRIC_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "pixel_f1_max",
)


def counts(fs: FeatureSet) -> dict[str, int]:
    """The OUT.json counts: references, pool, test images (normal / defective)."""
    labels = fs.labels
    return {
        "n_train": fs.n_train,
        "n_pool": fs.n_pool,
        "n_test": int(labels.size),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_defective": int((labels == 1).sum()),
    }


def result_dict(
    cfg: EvalConfig,
    category: Category,
    fs: FeatureSet,
    out: MethodOutput,
    checkpoint: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The OUT.json document: headline metrics first, then counts, timings, configuration."""
    m = out.metrics
    config = asdict(cfg)
    config["shots"] = shots_label(cfg.shots)
    config["image_size"] = fs.image_size
    config["category"] = category.root
    return {
        "category": category.name,
        "features": cfg.features,
        "method": out.method,
        "shots": shots_label(cfg.shots),
        **{k: m[k] for k in METRIC_KEYS},
        **counts(fs),
        "seconds": round(seconds, 3),
        "timing": {
            "features_s": round(fs.seconds, 3),
            "fit_s": round(out.fit_seconds, 3),
            "score_s": round(out.score_seconds, 3),
        },
        "pixel_stride": m.get("pixel_stride"),
        "per_defect": per_defect_auroc(fs.samples, out.scores),
        "detector": out.detector_info,
        "checkpoint": checkpoint or None,
        "notes": list(fs.notes),
        "config": config,
        "versions": _versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def per_defect_auroc(samples: Sequence[Sample], scores: np.ndarray) -> dict[str, Any]:
    """Image AUROC of each defect type against all normal test images."""
    labels = np.array([s.label for s in samples])
    normal = scores[labels == 0]
    out: dict[str, Any] = {}
    for defect in sorted({s.defect for s in samples if s.label == 1}):
        idx = np.array([s.label == 1 and s.defect == defect for s in samples])
        both = np.r_[normal, scores[idx]]
        y = np.r_[np.zeros(normal.size), np.ones(int(idx.sum()))]
        out[defect] = {"n": int(idx.sum()), "image_auroc": M.auroc(both, y)}
    return out


def untrained_warning(checkpoint: dict[str, Any]) -> str | None:
    if checkpoint and checkpoint.get("trained") is False:
        return (
            f"checkpoint {checkpoint.get('path')} is an UNTRAINED projector: these numbers are "
            "a pipeline check, never a result"
        )
    return None


def evaluate(
    cfg: EvalConfig,
    show_progress: bool = True,
    lm: LoadedModel | None = None,
) -> tuple[dict[str, Any], FeatureSet, MethodOutput]:
    """Run one evaluation; returns (OUT.json dict, features, scores/maps)."""
    cfg.validate()
    t0 = time.perf_counter()
    category = load_category(cfg.category)
    lm = lm or load_model(cfg)
    image_size = cfg.image_size or lm.spec.image_size
    need_train = cfg.method != "featurenorm"
    n_extract = cfg.shots
    if not need_train and cfg.shots is None:
        # FeatureNorm fits nothing: with all shots only the (capped) reference pool is used.
        n_extract = min(cfg.pool_cap, len(category.train_good))
    raw = raw_features(
        lm,
        category,
        image_size,
        n_extract,
        max_test=cfg.max_test,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        show_progress=show_progress,
    )
    fs = feature_set(
        lm,
        raw,
        cfg.features,
        cfg.shots,
        pool_cap=cfg.pool_cap,
        need_train=need_train,
        batch_size=cfg.batch_size,
        show_progress=show_progress,
    )
    if n_extract != cfg.shots:
        fs.notes.append(
            f"FeatureNorm uses only the reference pool: 'all' shots = the first {n_extract} "
            f"train/good images (pool cap {cfg.pool_cap})"
        )
    fs.seconds += raw.seconds
    out = run_method(fs, cfg.method, cfg.batch_size, show_progress)
    result = result_dict(cfg, category, fs, out, lm.checkpoint, time.perf_counter() - t0)
    warning = untrained_warning(lm.checkpoint)
    if warning:
        result["notes"].append(warning)
        log.warning(warning)
    return result, fs, out


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically (NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    tmp.replace(path)


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
