"""ADPretrain training loop: learn the per-level projector on frozen-backbone residual features.

Recipe (docs/METHOD.md sections 3-5, with the reference code's defects fixed, section 8):

1. The data (:class:`pretrain.data.PretrainingSet`): several categories, one class each; images
   are decoded and resized once and kept in memory.
2. Reference features are cached: every reference image of every class is encoded by the frozen
   backbone once; each batch draws K in {1, 4, 8} of them and builds its pool from the cache.
3. Centres c_l (mean normal un-projected residual per level) are computed before training.
4. Adam (lr 1e-4, weight decay 5e-4), batch 32, 10 epochs, lr x0.1 at epochs 7 and 9 (scaled to
   the epoch count), only the projector trained; batches without an abnormal token are skipped.
5. After each epoch the validation loss (held-out images of the pretraining classes, fixed
   anomalies, augmentations and reference draws) selects the checkpoint: ``out`` always holds
   the best epoch so far. A resume state (``<out stem>.resume.pt``: projector, optimiser,
   scheduler, history, RNG) is written after every epoch and on Ctrl-C; all writes are atomic
   (temporary file + rename), so a crash never loses the last good checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor
from torch.utils.data import DataLoader

from pretrain.backbones import get_spec, load_backbone
from pretrain.checkpoint import save_checkpoint
from pretrain.data import ClassBatchSampler, PhotometricAugment, PretrainingSet, draw_shots
from pretrain.data.pretraining import DEFAULT_SHOTS, PretrainingDataset
from pretrain.losses import adpretrain_loss, angle_labels, has_abnormal_tokens
from pretrain.preprocess import to_model_input
from pretrain.projector import FeatureProjector
from pretrain.residual import ReferencePool, pool_residuals

RESUME_FORMAT = "adqc-pretrain-resume"

__all__ = ["TrainConfig", "TrainResult", "lr_milestones", "resume_path", "train"]


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; the CLI maps its options onto these fields."""

    data: list[Path]
    out: Path
    backbone: str = "mobilenet_v2"
    weights: Path | None = None
    epochs: int = 10
    batch_size: int = 32
    image_size: int | None = None  # None: the backbone's input size
    synthetic_ratio: float = 0.5
    max_images_per_class: int | None = None
    num_tokens: int = 2048
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 5e-4
    shots: tuple[int, ...] = DEFAULT_SHOTS
    references_per_class: int = 32
    centre_images_per_class: int = 64
    resume: bool = False
    progress: bool = True
    time_limit_minutes: float | None = None  # stop before an epoch that would overrun it

    def plain(self) -> dict[str, Any]:
        """JSON/weights_only-friendly copy (paths as strings)."""
        d = asdict(self)
        d["data"] = [str(p) for p in self.data]
        d["out"] = str(self.out)
        d["weights"] = None if self.weights is None else str(self.weights)
        d["shots"] = list(self.shots)
        return d


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: str | None = None


def lr_milestones(epochs: int) -> list[int]:
    """lr x0.1 "at epochs 7 and 9" of 10, scaled: round(0.7 E) and round(0.9 E), in [1, E-1]."""
    if epochs < 2:
        return []
    ms = {min(epochs - 1, max(1, round(f * epochs))) for f in (0.7, 0.9)}
    return sorted(ms)


def resume_path(out: Path) -> Path:
    """Where the resume state of a run writing ``out`` lives: ``<stem>.resume.pt`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".resume.pt")


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Trainer:
    def __init__(self, cfg: TrainConfig, console: Console):
        self.cfg = cfg
        self.console = console
        self.device = _resolve_device(cfg.device)
        self.spec = get_spec(cfg.backbone)
        self.size = cfg.image_size or self.spec.image_size
        self.backbone = load_backbone(cfg.backbone, cfg.weights).to(self.device)
        self.pset = PretrainingSet(
            cfg.data,
            image_size=self.size,
            synthetic_ratio=cfg.synthetic_ratio,
            max_images_per_class=cfg.max_images_per_class,
            val_fraction=cfg.val_fraction,
            references_per_class=cfg.references_per_class,
            shots=cfg.shots,
            seed=cfg.seed,
        )
        self.augment = PhotometricAugment(self.size)
        self.train_set = self.pset.dataset("train")
        self.val_set = self.pset.dataset("val")
        self.sizes: list[tuple[int, int]] = []
        self.ref_features: list[list[Tensor]] = []  # per class, per level [R, C, h, w]
        self.centres: list[Tensor] = []

    # ------------------------------------------------------------------ features

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """uint8 [B,S,S,3] -> backbone maps per level (frozen, no grad)."""
        x = to_model_input(images.to(self.device), self.spec)
        return self.backbone(x)

    @torch.no_grad()
    def cache_references(self) -> None:
        for c in self.pset.classes:
            parts: list[list[Tensor]] = []
            for s in range(0, len(c.references), self.cfg.batch_size):
                batch = [
                    self.pset.cache.get(p)[0] for p in c.references[s : s + self.cfg.batch_size]
                ]
                parts.append(self.encode(torch.from_numpy(np.stack(batch))))
            self.ref_features.append([torch.cat(level) for level in zip(*parts, strict=True)])
        self.sizes = [(f.shape[-2], f.shape[-1]) for f in self.ref_features[0]]

    def pool(self, cls: int, rng: random.Random) -> ReferencePool:
        feats = self.ref_features[cls]
        available = feats[0].shape[0]
        k = draw_shots(rng, self.pset.shots, available)
        idx = torch.tensor(sorted(rng.sample(range(available), k)), device=self.device)
        return ReferencePool.from_features([f.index_select(0, idx) for f in feats])

    @torch.no_grad()
    def residuals(self, images: Tensor, pool: ReferencePool) -> list[Tensor]:
        return pool_residuals(self.encode(images), pool)

    @torch.no_grad()
    def compute_centres(self) -> list[Tensor]:
        """Mean normal (angle-label) un-projected residual per level over the training set."""
        per_class = self.cfg.centre_images_per_class
        items = []
        for c in self.pset.classes:
            items += c.train[:per_class]
        ds = PretrainingDataset(self.pset, items, deterministic=True)
        loader = self._loader(ds, shuffle=False, seed=self.cfg.seed)
        rng = random.Random(f"{self.cfg.seed}/centres")
        sums = [torch.zeros(c, device=self.device, dtype=torch.float64) for c in self.spec.channels]
        counts = [0] * len(sums)
        for batch in loader:
            pool = self.pool(int(batch["cls"][0]), rng)
            res = self.residuals(batch["image"], pool)
            for i, r in enumerate(res):
                normal = ~angle_labels(batch["mask"], r.shape[-2:]).to(self.device)
                tokens = r.permute(0, 2, 3, 1)[normal]
                sums[i] += tokens.double().sum(0)
                counts[i] += tokens.shape[0]
        if min(counts) == 0:
            raise RuntimeError("no normal tokens to compute the centres from")
        return [(s / n).float() for s, n in zip(sums, counts, strict=True)]

    # ------------------------------------------------------------------ loop

    def _loader(self, ds: PretrainingDataset, shuffle: bool, seed: int) -> DataLoader:
        sampler = ClassBatchSampler(ds.classes, self.cfg.batch_size, seed=seed, shuffle=shuffle)
        return DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    def step_loss(
        self, projector: FeatureProjector, batch: dict, pool: ReferencePool, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]] | None:
        """The loss of one batch, or None when it has no abnormal token (skipped).

        Two photometric views of the batch (drawn from ``gen``) share its masks."""
        mask = batch["mask"]
        if not has_abnormal_tokens(mask, self.sizes):
            return None
        b = mask.shape[0]
        images = batch["image"].to(self.device)
        views = torch.cat([self.augment(images, gen), self.augment(images, gen)])
        res = self.residuals(views, pool)
        out = projector(res)
        e1 = [o[:b] for o in out]
        e2 = [o[b:] for o in out]
        return adpretrain_loss(e1, e2, self.centres, mask.to(self.device))


def train(
    cfg: TrainConfig,
    console: Console | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run (or resume) a pretraining run; returns the selected epoch and the history.

    ``out`` receives the best checkpoint (lowest validation loss; training loss when there is
    no validation split) via :func:`pretrain.checkpoint.save_checkpoint`. Ctrl-C saves the
    resume state (and the current weights when no epoch finished yet) and re-raises.
    """
    console = console or Console(stderr=True)
    start = time.monotonic()
    cfg.out = Path(cfg.out)
    _seed_all(cfg.seed)
    t = _Trainer(cfg, console)
    state_path = resume_path(cfg.out)
    state: dict[str, Any] | None = None
    if cfg.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no resume state at {state_path}")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != RESUME_FORMAT or state["config"]["backbone"] != cfg.backbone:
            raise ValueError(f"{state_path} is not a resume state for backbone {cfg.backbone!r}")

    console.print(
        f"[bold]pretrain[/] {cfg.backbone} on {', '.join(t.pset.class_names)}: "
        f"{len(t.train_set)} train / {len(t.val_set)} val images, size {t.size}, "
        f"device {t.device}"
    )
    t0 = time.monotonic()
    t.pset.preload(threads=max(1, cfg.workers or 2))
    t.cache_references()
    console.print(f"images and reference features cached in {time.monotonic() - t0:.1f}s")

    projector = FeatureProjector(t.spec.channels, num_tokens=cfg.num_tokens).to(t.device)
    optimizer = torch.optim.Adam(projector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones(cfg.epochs), 0.1)
    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val": math.inf}
    first_epoch = 1
    if state is not None:
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.milestones.clear()
        scheduler.milestones.update({m: 1 for m in lr_milestones(cfg.epochs)})
        t.centres = [c.to(t.device) for c in state["centres"]]
        history = list(state["history"])
        best = dict(state["best"])
        first_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
        console.print(f"resumed from {state_path} after epoch {first_epoch - 1}")
    else:
        t0 = time.monotonic()
        t.centres = t.compute_centres()
        console.print(
            f"centres computed in {time.monotonic() - t0:.1f}s "
            f"(norms {', '.join(f'{float(c.norm()):.3f}' for c in t.centres)})"
        )

    config = {
        "backbone": cfg.backbone,
        "train_image_size": t.size,
        "training": cfg.plain(),
    }
    summary = t.pset.summary()

    def save_best(epoch_history: list[dict[str, Any]]) -> None:
        save_checkpoint(cfg.out, projector, config, t.centres, summary, epoch_history)

    def save_state(epoch_done: int) -> None:
        _atomic_save(
            {
                "format": RESUME_FORMAT,
                "config": cfg.plain(),
                "epoch": epoch_done,
                "projector": projector.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "centres": [c.cpu() for c in t.centres],
                "history": history,
                "best": best,
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )

    train_loader = t._loader(t.train_set, shuffle=True, seed=cfg.seed)
    val_loader = t._loader(t.val_set, shuffle=False, seed=cfg.seed)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not cfg.progress,
        transient=False,
    )
    epoch = completed = first_epoch - 1
    stopped_early = None
    try:
        with progress:
            for epoch in range(first_epoch, cfg.epochs + 1):
                if cfg.time_limit_minutes is not None and history:
                    last = history[-1]["seconds"] + history[-1].get("val_seconds", 0.0)
                    if time.monotonic() - start + last > 60 * cfg.time_limit_minutes:
                        stopped_early = (
                            f"time limit {cfg.time_limit_minutes} min: stopped before epoch "
                            f"{epoch} of {cfg.epochs}"
                        )
                        console.print(f"[yellow]{stopped_early}[/]")
                        break
                record = _run_epoch(t, projector, optimizer, train_loader, epoch, progress)
                t_val = time.monotonic()
                record["val_loss"] = _validate(t, projector, val_loader, progress, epoch)
                record["val_seconds"] = time.monotonic() - t_val
                record["lr"] = optimizer.param_groups[0]["lr"]
                scheduler.step()
                history.append(record)
                score = record["val_loss"]
                if not math.isfinite(score):  # no validation split (or no abnormal val token)
                    score = record["train_loss"]
                improved = score < best["val"]
                if improved:
                    best = {"epoch": epoch, "val": score}
                    save_best([*history])
                save_state(epoch)
                completed = epoch
                console.print(
                    f"epoch {epoch}/{cfg.epochs}: train {record['train_loss']:.4f} "
                    f"(angle {record['train_angle']:.4f}, norm {record['train_norm']:.4f}) "
                    f"val {record['val_loss']:.4f} lr {record['lr']:.1e} "
                    f"{record['images_per_s']:.1f} img/s {record['seconds']:.0f}s"
                    + ("  [green]best[/]" if improved else "")
                )
                if on_epoch is not None:
                    on_epoch(record)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted in epoch {epoch}: saving the resume state[/]")
        save_state(completed)  # an unfinished epoch is redone on --resume
        if not cfg.out.is_file():
            save_best([*history, {"interrupted_in_epoch": epoch}])
        raise
    if stopped_early:
        config["stopped_early"] = stopped_early
    if best["epoch"]:
        _finalise(cfg.out, config, summary, history, best)
    seconds = time.monotonic() - start
    result = TrainResult(cfg.out, best["epoch"], best["val"], history, seconds, stopped_early)
    console.print(
        f"best epoch {result.best_epoch} (val {result.best_val_loss:.4f}) -> {cfg.out}; "
        f"{result.seconds:.0f}s"
    )
    return result


def _finalise(out: Path, config: dict, summary: dict, history: list, best: dict) -> None:
    """Rewrite the best checkpoint's metadata with the full history and the selection."""
    from pretrain.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    best_projector = FeatureProjector.from_config(ckpt.config)
    best_projector.load_state_dict(ckpt.projector_state)
    full = {**config, "selected_epoch": best["epoch"], "selected_val_loss": best["val"]}
    save_checkpoint(out, best_projector, full, ckpt.centres, summary, history)


def _run_epoch(t: _Trainer, projector, optimizer, loader, epoch: int, progress: Progress) -> dict:
    projector.train()
    loader.batch_sampler.set_epoch(epoch)
    t.train_set.set_epoch(epoch)
    rng = random.Random(f"{t.cfg.seed}/train/{epoch}")
    task = progress.add_task(f"epoch {epoch}", total=len(loader.batch_sampler), loss=0.0, ips=0.0)
    tot = {"loss": 0.0, "angle": 0.0, "norm": 0.0, "n": 0}
    total = len(loader.batch_sampler)
    log_every = 0 if progress.console.is_terminal else max(1, total // 10)
    skipped = 0
    images = 0
    start = time.monotonic()
    gen = torch.Generator().manual_seed(t.cfg.seed * 1000 + epoch)
    for done, batch in enumerate(loader, 1):
        pool = t.pool(int(batch["cls"][0]), rng)
        out = t.step_loss(projector, batch, pool, gen)
        images += batch["mask"].shape[0]
        if out is None:
            skipped += 1
        else:
            loss, parts = out
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = batch["mask"].shape[0]
            tot["loss"] += float(loss.detach()) * n
            tot["angle"] += parts["angle"] * n
            tot["norm"] += parts["norm"] * n
            tot["n"] += n
        elapsed = max(time.monotonic() - start, 1e-6)
        mean_loss = tot["loss"] / max(tot["n"], 1)
        progress.update(task, advance=1, loss=mean_loss, ips=images / elapsed)
        if log_every and (done % log_every == 0 or done == total):
            eta = elapsed / max(done, 1) * (total - done)
            progress.console.print(
                f"  epoch {epoch} batch {done}/{total} loss {mean_loss:.4f} "
                f"{images / elapsed:.1f} img/s ETA {eta:.0f}s"
            )
    progress.remove_task(task)
    seconds = time.monotonic() - start
    n = max(tot["n"], 1)
    return {
        "epoch": epoch,
        "train_loss": tot["loss"] / n,
        "train_angle": tot["angle"] / n,
        "train_norm": tot["norm"] / n,
        "train_images": images,
        "skipped_batches": skipped,
        "images_per_s": images / max(seconds, 1e-6),
        "seconds": seconds,
    }


@torch.no_grad()
def _validate(t: _Trainer, projector, loader, progress: Progress, epoch: int) -> float:
    """Mean loss of the validation batches with abnormal tokens (fixed draws); NaN if none."""
    if len(loader.batch_sampler) == 0:
        return math.nan
    projector.eval()
    rng = random.Random(f"{t.cfg.seed}/val")  # same reference draws every epoch
    task = progress.add_task(f"val {epoch}", total=len(loader.batch_sampler), loss=0.0, ips=0.0)
    total, n = 0.0, 0
    start = time.monotonic()
    seen = 0
    gen = torch.Generator().manual_seed(t.cfg.seed)  # same views every epoch
    for batch in loader:
        pool = t.pool(int(batch["cls"][0]), rng)
        out = t.step_loss(projector, batch, pool, gen)
        seen += batch["mask"].shape[0]
        if out is not None:
            b = batch["mask"].shape[0]
            total += float(out[0]) * b
            n += b
        progress.update(
            task,
            advance=1,
            loss=total / max(n, 1),
            ips=seen / max(time.monotonic() - start, 1e-6),
        )
    progress.remove_task(task)
    return total / n if n else math.nan
