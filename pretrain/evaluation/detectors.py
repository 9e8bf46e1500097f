"""Downstream anomaly detectors on per-level feature maps: FeatureNorm, PatchCore, PaDiM.

All three share one API so that evaluation and serving use the same code:

    det.fit(features)            # features: list over levels of [N,C,h,w] (normal images)
    level_maps = det.score(features)   # list of [B,h',w'] token score maps (raw scores)
    maps = det.anomaly_maps(features, image_size)  # [B,S,S]: postprocess.anomaly_map
    state = det.state()          # dict[str, np.ndarray] (memory bank / statistics + config)
    det2 = Detector.from_state(state)  # same scores as det

Pure torch + numpy; batched; deterministic (fixed seeds for random projections and channel
subsets). Nothing here knows where the features came from: the combination "FeatureNorm on raw
backbone features" is refused by :func:`check_supported`, used by the evaluation runner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.evaluation.postprocess import DEFAULT_SIGMA, anomaly_map

METHODS = ("featurenorm", "patchcore", "padim")
FEATURE_KINDS = ("raw", "residual", "adpretrain")


class UnsupportedCombinationError(ValueError):
    """A detector that is meaningless on the given kind of features."""


def check_supported(method: str, features: str) -> None:
    """Refuse FeatureNorm on raw backbone features (the norm of an ImageNet feature is not an
    anomaly score: it measures contrast/texture energy, not deviation from the normal class).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if features not in FEATURE_KINDS:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_KINDS)}")
    if method == "featurenorm" and features == "raw":
        raise UnsupportedCombinationError(
            "FeatureNorm scores a token by its norm a(e) = sqrt(||e|| + 1) - 1, which is an "
            "anomaly score only for features trained to make normal tokens small (the "
            "ADPretrain projector) or for residuals against normal references. Raw backbone "
            "features carry no such meaning (their norm tracks texture and contrast), so "
            "'--features raw --method featurenorm' is refused: use --features adpretrain "
            "(or the 'residual' ablation), or a memory-based method (patchcore, padim) for "
            "the raw baseline."
        )


def _check_levels(features: Sequence[Tensor], what: str) -> list[Tensor]:
    if len(features) == 0:
        raise ValueError(f"{what}: no feature levels given")
    out = []
    for f in features:
        if not isinstance(f, Tensor):
            f = torch.as_tensor(np.asarray(f))
        if f.ndim != 4:
            raise ValueError(f"{what}: each level must be [N,C,h,w], got {tuple(f.shape)}")
        out.append(f.float())
    n = out[0].shape[0]
    if any(f.shape[0] != n for f in out):
        raise ValueError(f"{what}: levels disagree on the batch size")
    return out


def _scalar(state: dict[str, np.ndarray], key: str, default):
    if key not in state:
        return default
    v = np.asarray(state[key])
    return type(default)(v.item()) if default is not None else v.item()


class Detector:
    """Common API; subclasses implement fit/score/state/_from_state."""

    name: ClassVar[str] = ""

    def fit(self, features: Sequence[Tensor]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def score(self, features: Sequence[Tensor]) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Detector:
        """Rebuild a fitted detector; on the base class, dispatch on state['method']."""
        if cls is Detector:
            method = str(np.asarray(state.get("method", "")).item())
            return DETECTORS[method].from_state(state)
        return cls._from_state(state)

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> Detector:  # pragma: no cover
        raise NotImplementedError

    def anomaly_maps(
        self, features: Sequence[Tensor], image_size, sigma: float = DEFAULT_SIGMA
    ) -> Tensor:
        """Final smoothed maps [B,S,S] (bilinear upsampling, level mean, Gaussian)."""
        return anomaly_map(self.score(features), image_size, sigma)


# ----------------------------------------------------------------------------- FeatureNorm


def feature_norm_score(e: Tensor) -> Tensor:
    """a(e) = sqrt(||e||_2 + 1) - 1 over channels: [B,C,h,w] -> [B,h,w]."""
    return torch.sqrt(torch.linalg.vector_norm(e.float(), dim=1) + 1.0) - 1.0


class FeatureNorm(Detector):
    """Training-free: the token score is the norm-based a(e) of each (projected) feature."""

    name = "featurenorm"

    def fit(self, features: Sequence[Tensor]) -> None:
        _check_levels(features, "FeatureNorm.fit")  # stateless: nothing to learn

    def score(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [feature_norm_score(f) for f in _check_levels(features, "FeatureNorm.score")]

    def state(self) -> dict[str, np.ndarray]:
        return {"method": np.array(self.name)}

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> FeatureNorm:
        return cls()


# ------------------------------------------------------------------------------- PatchCore


def nearest_distances(
    queries: Tensor,
    bank: Tensor,
    max_chunk_elems: int = 1 << 24,
    search_dtype: torch.dtype | None = None,
) -> Tensor:
    """L2 distance of every query row [Q,D] to its nearest bank row [M,D] -> [Q].

    Queries are processed in chunks through one preallocated [chunk, M] buffer
    (||q||^2 - 2 q.b + ||b||^2 via addmm into the buffer), so memory stays bounded
    (~64 MB of float32 by default) whatever Q and M are. ``search_dtype`` (torch.bfloat16 /
    torch.float16): the q.b products in that precision, the norms and the sum in float32
    (faster where the hardware has such units; distances then carry that precision's error).
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} disagree")
    q = queries.float()
    b = bank.float()
    m = b.shape[0]
    chunk = max(1, min(q.shape[0], max_chunk_elems // max(m, 1)))
    b_sq = (b * b).sum(dim=1)
    bt = b.t()
    low = search_dtype is not None and search_dtype != torch.float32
    bt_low = bt.to(search_dtype) if low else bt
    buf = torch.empty(chunk, m, dtype=torch.float32, device=q.device)
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    for start in range(0, q.shape[0], chunk):
        qc = q[start : start + chunk]
        n = qc.shape[0]
        d = buf[:n]
        if low:
            d.copy_(torch.mm(qc.to(search_dtype), bt_low)).mul_(-2.0).add_(b_sq.unsqueeze(0))
        else:
            torch.addmm(b_sq.unsqueeze(0), qc, bt, beta=1.0, alpha=-2.0, out=d)
        d.add_((qc * qc).sum(dim=1, keepdim=True))
        out[start : start + n] = d.amin(dim=1)
    return out.clamp_(min=0.0).sqrt_()


def greedy_coreset(
    features: Tensor, n_select: int, project_dim: int = 128, seed: int = 0
) -> Tensor:
    """Greedy k-center coreset indices [n_select] (PatchCore).

    Selection runs on a Gaussian random projection to ``project_dim`` dimensions. The
    min-distance and new-distance buffers are allocated once and updated in place (addmv /
    minimum with out=): no temporary per iteration, which matters with glibc malloc.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    x = features.float()
    if project_dim and x.shape[1] > project_dim:
        proj = torch.randn(x.shape[1], project_dim, generator=g) / math.sqrt(project_dim)
        x = x @ proj.to(x.device)
    x = x.contiguous()
    sq = (x * x).sum(dim=1)
    min_d = torch.empty(n, dtype=torch.float32, device=x.device)
    new_d = torch.empty(n, dtype=torch.float32, device=x.device)
    selected = torch.empty(n_select, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=g).item())
    for k in range(n_select):
        selected[k] = idx
        c = x[idx]
        torch.addmv(sq, x, c, beta=1.0, alpha=-2.0, out=new_d)
        new_d.add_(sq[idx])
        if k == 0:
            min_d.copy_(new_d)
        else:
            torch.minimum(min_d, new_d, out=min_d)
        idx = int(torch.argmax(min_d).item())
    return selected


class PatchCore(Detector):
    """PatchCore (Roth et al., CVPR 2022) on the last ``n_levels`` feature levels.

    Embedding: 3x3 neighbourhood average per level; levels bilinearly upsampled to the finest
    grid among them; each level's channels adaptive-average-pooled to a common width
    ``embed_dim`` (default: the widest level), then the levels pooled together to
    ``target_dim`` (default: embed_dim), as in the reference implementation's aggregator.
    Memory bank: every patch of the fitted images while there are at most
    ``coreset_threshold`` of them (few-shot: all K images' patches), else a greedy coreset of
    ``coreset_ratio`` (random projection to 128-d for selection). Token score: L2 distance to
    the nearest bank patch.
    """

    name = "patchcore"

    def __init__(
        self,
        n_levels: int = 3,
        neighbourhood: int = 3,
        embed_dim: int | None = None,
        target_dim: int | None = None,
        coreset_ratio: float = 0.1,
        coreset_threshold: int = 10_000,
        project_dim: int = 128,
        seed: int = 0,
    ) -> None:
        self.n_levels = n_levels
        self.neighbourhood = neighbourhood
        self.embed_dim = embed_dim
        self.target_dim = target_dim
        self.coreset_ratio = coreset_ratio
        self.coreset_threshold = coreset_threshold
        self.project_dim = project_dim
        self.seed = seed
        self.memory: Tensor | None = None
        self.n_patches_seen = 0
        # rows of the fitted embedding kept by the coreset (None: every row, or from a state)
        self.selected: Tensor | None = None

    def embed(self, features: Sequence[Tensor]) -> tuple[Tensor, tuple[int, int]]:
        """Patch embeddings [B*h*w, target_dim] and the grid (h, w)."""
        levels = _check_levels(features, "PatchCore")[-self.n_levels :]
        if self.embed_dim is None:
            self.embed_dim = max(f.shape[1] for f in levels)
        if self.target_dim is None:
            self.target_dim = self.embed_dim
        grid = max((tuple(f.shape[-2:]) for f in levels), key=lambda s: s[0] * s[1])
        p = self.neighbourhood
        b = levels[0].shape[0]
        parts = []
        for f in levels:
            if p > 1:
                f = F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=False)
            if tuple(f.shape[-2:]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            tokens = f.permute(0, 2, 3, 1).reshape(-1, 1, f.shape[1])
            parts.append(F.adaptive_avg_pool1d(tokens, self.embed_dim))  # [BHW,1,D]
        stacked = torch.cat(parts, dim=1).reshape(b * grid[0] * grid[1], 1, -1)
        emb = F.adaptive_avg_pool1d(stacked, self.target_dim).squeeze(1)
        return emb.contiguous(), grid

    def fit(self, features: Sequence[Tensor]) -> None:
        emb, _ = self.embed(features)
        self.n_patches_seen = emb.shape[0]
        self.selected = None
        if emb.shape[0] > self.coreset_threshold:
            n_select = max(1, int(math.ceil(self.coreset_ratio * emb.shape[0])))
            self.selected = greedy_coreset(emb, n_select, self.project_dim, self.seed)
            emb = emb[self.selected]
        self.memory = emb.contiguous()

    def score(self, features: Sequence[Tensor]) -> list[Tensor]:
        if self.memory is None:
            raise RuntimeError("PatchCore.score called before fit (or from_state)")
        emb, grid = self.embed(features)
        d = nearest_distances(emb, self.memory.to(emb.device))
        return [d.reshape(-1, grid[0], grid[1])]

    def state(self) -> dict[str, np.ndarray]:
        if self.memory is None:
            raise RuntimeError("PatchCore.state called before fit")
        return {
            "method": np.array(self.name),
            "memory": self.memory.cpu().numpy().astype(np.float32),
            "n_levels": np.array(self.n_levels),
            "neighbourhood": np.array(self.neighbourhood),
            "embed_dim": np.array(self.embed_dim),
            "target_dim": np.array(self.target_dim),
            "coreset_ratio": np.array(self.coreset_ratio),
            "coreset_threshold": np.array(self.coreset_threshold),
            "project_dim": np.array(self.project_dim),
            "seed": np.array(self.seed),
        }

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> PatchCore:
        memory = torch.from_numpy(np.ascontiguousarray(state["memory"], dtype=np.float32))
        det = cls(
            n_levels=_scalar(state, "n_levels", 3),
            neighbourhood=_scalar(state, "neighbourhood", 3),
            embed_dim=_scalar(state, "embed_dim", 0) or None,
            target_dim=_scalar(state, "target_dim", int(memory.shape[1])),
            coreset_ratio=_scalar(state, "coreset_ratio", 0.1),
            coreset_threshold=_scalar(state, "coreset_threshold", 10_000),
            project_dim=_scalar(state, "project_dim", 128),
            seed=_scalar(state, "seed", 0),
        )
        if det.target_dim != memory.shape[1]:
            raise ValueError(
                f"PatchCore state: memory width {memory.shape[1]} != target_dim {det.target_dim}"
            )
        det.memory = memory
        det.n_patches_seen = int(memory.shape[0])
        return det


# ----------------------------------------------------------------------------------- PaDiM


def ledoit_wolf(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batched Ledoit-Wolf shrunk covariance (scikit-learn's estimator, float64).

    x: [P,N,d] (P independent problems of N samples). Returns (mean [P,d],
    covariance [P,d,d], shrinkage [P]).
    """
    x = x.double()
    p, n, d = x.shape
    mean = x.mean(dim=1)
    xc = x - mean.unsqueeze(1)
    emp = xc.transpose(1, 2) @ xc / n  # [P,d,d]
    trace = torch.diagonal(emp, dim1=1, dim2=2).sum(dim=1)
    mu = trace / d
    x2 = xc * xc
    beta_ = (x2.transpose(1, 2) @ x2).sum(dim=(1, 2))
    delta_ = (emp * emp).sum(dim=(1, 2))  # = sum((X^T X)^2) / n^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    shrink = torch.where(delta > 0, beta / delta.clamp(min=1e-300), torch.zeros_like(delta))
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cov = (1.0 - shrink)[:, None, None] * emp + (shrink * mu)[:, None, None] * eye
    return mean, cov, shrink


class PaDiM(Detector):
    """PaDiM (Defard et al., ICPR 2021): a Gaussian per grid position.

    Levels are nearest-upsampled to the finest grid and concatenated; a fixed random subset of
    ``n_channels`` channels is kept (seeded, as in the paper's random dimensionality reduction).
    Per position the covariance is the Ledoit-Wolf shrunk estimate plus ``eps * I`` (the
    paper's 0.01 I). The shrinkage intensity is estimated from the K normal images alone; it is
    exactly 0 for K = 2 (two samples are symmetric about their mean, so the estimator sees no
    sampling variance), where ``eps * I`` alone keeps the rank-1 covariance invertible; from
    K = 3 on it pulls the few-sample covariance towards a scaled identity. Token score:
    Mahalanobis distance to the position's Gaussian.
    """

    name = "padim"

    def __init__(self, n_channels: int = 100, eps: float = 0.01, seed: int = 0) -> None:
        self.n_channels = n_channels
        self.eps = eps
        self.seed = seed
        self.channel_idx: Tensor | None = None
        self.mean: Tensor | None = None  # [P,d]
        self.precision: Tensor | None = None  # [P,d,d]
        self.grid: tuple[int, int] | None = None
        self.shrinkage: Tensor | None = None

    def embed(self, features: Sequence[Tensor]) -> Tensor:
        """[B, d, h, w] at the finest grid, channel subset applied."""
        levels = _check_levels(features, "PaDiM")
        grid = max((tuple(f.shape[-2:]) for f in levels), key=lambda s: s[0] * s[1])
        ups = [
            f if tuple(f.shape[-2:]) == grid else F.interpolate(f, size=grid, mode="nearest")
            for f in levels
        ]
        x = torch.cat(ups, dim=1)
        if self.channel_idx is None:
            total = x.shape[1]
            g = torch.Generator().manual_seed(self.seed)
            k = min(self.n_channels, total)
            self.channel_idx = torch.randperm(total, generator=g)[:k].sort().values
        if int(self.channel_idx.max()) >= x.shape[1]:
            raise ValueError(
                f"PaDiM: features have {x.shape[1]} channels, fitted on more "
                f"(max index {int(self.channel_idx.max())})"
            )
        return x[:, self.channel_idx.to(x.device)]

    def fit(self, features: Sequence[Tensor]) -> None:
        x = self.embed(features)  # [N,d,h,w]
        n, d, h, w = x.shape
        self.grid = (h, w)
        samples = x.permute(2, 3, 0, 1).reshape(h * w, n, d)
        mean, cov, shrink = ledoit_wolf(samples)
        cov = cov + self.eps * torch.eye(d, dtype=cov.dtype)
        self.mean = mean.float()
        self.precision = torch.linalg.inv(cov).float()
        self.shrinkage = shrink.float()

    def score(self, features: Sequence[Tensor], batch: int = 16) -> list[Tensor]:
        if self.mean is None or self.precision is None:
            raise RuntimeError("PaDiM.score called before fit (or from_state)")
        x = self.embed(features)
        b, d, h, w = x.shape
        if (h, w) != self.grid:
            raise ValueError(f"PaDiM: feature grid {(h, w)} differs from the fitted {self.grid}")
        out = []
        for start in range(0, b, batch):
            diff = x[start : start + batch].permute(0, 2, 3, 1).reshape(-1, h * w, d) - self.mean
            m = torch.einsum("bpd,pde,bpe->bp", diff, self.precision, diff)
            out.append(m.clamp(min=0.0).sqrt().reshape(-1, h, w))
        return [torch.cat(out, dim=0)]

    def state(self) -> dict[str, np.ndarray]:
        if self.mean is None or self.precision is None or self.grid is None:
            raise RuntimeError("PaDiM.state called before fit")
        return {
            "method": np.array(self.name),
            "mean": self.mean.numpy(),
            "precision": self.precision.numpy(),
            "channel_idx": self.channel_idx.numpy().astype(np.int64),
            "grid": np.array(self.grid, dtype=np.int64),
            "n_channels": np.array(self.n_channels),
            "eps": np.array(self.eps),
            "seed": np.array(self.seed),
        }

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> PaDiM:
        det = cls(
            n_channels=_scalar(state, "n_channels", 100),
            eps=_scalar(state, "eps", 0.01),
            seed=_scalar(state, "seed", 0),
        )
        det.mean = torch.from_numpy(np.asarray(state["mean"], dtype=np.float32))
        det.precision = torch.from_numpy(np.asarray(state["precision"], dtype=np.float32))
        det.channel_idx = torch.from_numpy(np.asarray(state["channel_idx"], dtype=np.int64))
        det.grid = tuple(int(v) for v in np.asarray(state["grid"]))
        return det


DETECTORS: dict[str, type[Detector]] = {
    FeatureNorm.name: FeatureNorm,
    PatchCore.name: PatchCore,
    PaDiM.name: PaDiM,
}


def make_detector(method: str, **kwargs) -> Detector:
    """Detector by name ('featurenorm' | 'patchcore' | 'padim') with its keyword options."""
    try:
        cls = DETECTORS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None
    return cls(**kwargs)
