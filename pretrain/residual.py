"""Residual features (ResAD/ADPretrain): each patch feature minus its cosine nearest neighbour
among all patch features (any position, any image) of the K normal reference images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class ReferencePool:
    """Per level: the reference patch features [M, C] and their unit-normalised copy."""

    def __init__(self, levels: Sequence[Tensor]) -> None:
        self.levels: list[Tensor] = [torch.as_tensor(p).float().contiguous() for p in levels]
        for p in self.levels:
            if p.ndim != 2:
                raise ValueError(f"pool level must be [M, C], got {tuple(p.shape)}")
        self.normed: list[Tensor] = [F.normalize(p, dim=1) for p in self.levels]

    @classmethod
    def from_features(cls, level_features: Sequence[Tensor]) -> ReferencePool:
        """Build from the K reference images' level maps, each [K, C, h, w]."""
        return cls([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in level_features])

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(p.shape[1] for p in self.levels)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of reference patches M per level."""
        return tuple(p.shape[0] for p in self.levels)

    @property
    def device(self) -> torch.device:
        return self.levels[0].device

    def to(self, device: torch.device | str) -> ReferencePool:
        """This pool on `device` (self when already there)."""
        device = torch.device(device)
        if all(p.device == device for p in self.levels):
            return self
        pool = ReferencePool.__new__(ReferencePool)
        pool.levels = [p.to(device) for p in self.levels]
        pool.normed = [p.to(device) for p in self.normed]
        return pool

    def normed_as(self, dtype: torch.dtype | None) -> list[Tensor]:
        """The unit-normalised levels in ``dtype`` (cast once, then cached on this pool)."""
        if dtype is None or dtype == self.normed[0].dtype:
            return self.normed
        cache: dict = self.__dict__.setdefault("_normed_cast", {})
        if dtype not in cache:
            cache[dtype] = [p.to(dtype) for p in self.normed]
        return cache[dtype]

    def numpy(self) -> list:
        """Per-level float32 numpy arrays [M, C] (what a ProductRecord stores)."""
        return [p.detach().cpu().numpy() for p in self.levels]


def nearest_indices(
    queries: Tensor,
    pool_normed: Tensor,
    chunk: int = 4096,
    queries_normed: bool = False,
    search_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Cosine 1-NN of each query row [N, C] in a unit-normalised pool [M, C].

    Returns (best cosine [N], index [N]). Works in query x pool blocks of at most chunk x chunk,
    so memory stays bounded for large pools; ties go to the lowest pool index (as argmax).
    ``search_dtype`` (e.g. torch.bfloat16 or torch.float16): run the similarity products in
    that precision (faster on CPUs with bf16 units and on GPUs); the returned cosines are then
    that precision's approximation and near-ties may pick another neighbour.
    """
    q = queries if queries_normed else F.normalize(queries, dim=1)
    if search_dtype is not None and search_dtype != q.dtype:
        q = q.to(search_dtype)
        pool_normed = pool_normed.to(search_dtype)
    n, m = q.shape[0], pool_normed.shape[0]
    if m == 0:
        raise ValueError("empty reference pool")
    best = torch.empty(n, dtype=q.dtype, device=q.device)
    index = torch.empty(n, dtype=torch.long, device=q.device)
    for qs in range(0, n, chunk):
        qc = q[qs : qs + chunk]
        bv: Tensor | None = None
        bi: Tensor | None = None
        for ps in range(0, m, chunk):
            sim = qc @ pool_normed[ps : ps + chunk].T
            v, i = sim.max(dim=1)
            i = i + ps
            if bv is None or bi is None:
                bv, bi = v, i
            else:
                better = v > bv  # strict: an equal later match keeps the earlier index
                bv = torch.where(better, v, bv)
                bi = torch.where(better, i, bi)
        assert bv is not None and bi is not None
        best[qs : qs + chunk] = bv
        index[qs : qs + chunk] = bi
    return best, index


def nearest_residuals(
    features: Tensor,
    pool: Tensor,
    chunk: int = 4096,
    pool_normed: Tensor | None = None,
    search_dtype: torch.dtype | None = None,
) -> Tensor:
    """features [B,C,h,w], pool [M,C] -> residual [B,C,h,w], r = f - p*, p* = argmax_p cos(f, p).

    p* is the un-normalised pool feature. Pass `pool_normed` (ReferencePool.normed) to skip
    re-normalising the pool on every call. ``search_dtype``: see :func:`nearest_indices` (the
    residual itself is always computed in the features' precision).
    """
    b, c, h, w = features.shape
    if pool.shape[1] != c:
        raise ValueError(f"pool has {pool.shape[1]} channels, features have {c}")
    pool = pool.to(device=features.device, dtype=features.dtype)
    if pool_normed is None:
        pool_normed = F.normalize(pool, dim=1)
    else:
        pool_normed = pool_normed.to(device=features.device, dtype=search_dtype or features.dtype)
    flat = features.permute(0, 2, 3, 1).reshape(-1, c)
    _, idx = nearest_indices(flat, pool_normed, chunk, search_dtype=search_dtype)
    residual = flat - pool.index_select(0, idx)
    return residual.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def pool_residuals(
    level_features: Sequence[Tensor],
    pool: ReferencePool,
    chunk: int = 4096,
    search_dtype: torch.dtype | None = None,
):
    """Residuals of every level against the matching level of `pool` (``search_dtype``: the
    precision of the 1-NN search, see :func:`nearest_indices`)."""
    if len(level_features) != len(pool.levels):
        raise ValueError(f"{len(level_features)} feature levels for {len(pool.levels)} pool levels")
    return [
        nearest_residuals(f, p, chunk, pool_normed=pn, search_dtype=search_dtype)
        for f, p, pn in zip(level_features, pool.levels, pool.normed_as(search_dtype), strict=True)
    ]


#: images whose leave-one-out residuals go through the projector together
LEAVE_ONE_OUT_BATCH = 32


def _residual_excluding(f: Tensor, pool: Tensor, normed: Tensor, rows: slice) -> Tensor:
    """f [1,C,h,w] -> its residual against ``pool`` [M,C] with the pool ``rows`` (the image's
    own patches) masked out: the same 1-NN as a pool built without them (ties: lowest index)."""
    _, c, h, w = f.shape
    flat = f.permute(0, 2, 3, 1).reshape(-1, c)
    sim = F.normalize(flat, dim=1) @ normed.T
    sim[:, rows] = float("-inf")
    idx = sim.argmax(dim=1)
    return (flat - pool.index_select(0, idx)).reshape(1, h, w, c).permute(0, 3, 1, 2)


def leave_one_out_residuals(
    level_features: Sequence[Tensor],
    projector: Callable[[list[Tensor]], list[Tensor]] | None = None,
    chunk: int = 4096,
    batch: int = LEAVE_ONE_OUT_BATCH,
) -> list[Tensor]:
    """Per level [K,C,h,w]: each of K reference images' residuals against the pool of the
    *other* K-1 (then through ``projector`` when given).

    In the full pool an image would match itself and get a zero residual; leaving it out gives
    it what a new image sees, a pool of other normal images. Onboarding and evaluation fit
    detector memories (and onboarding calibrates thresholds) on these features.

    The pool of all K images is built and normalised once and each image's own patches are
    masked out of its search (instead of rebuilding a (K-1)-image pool K times: O(K^2 M C)
    copying at full shot); residuals go through ``projector`` ``batch`` images at a time.
    ``chunk`` is kept for API compatibility (one image's queries are searched at once).
    """
    del chunk
    k = int(level_features[0].shape[0])
    if k < 2:
        raise ValueError(f"leave-one-out residuals need at least 2 reference images, got {k}")
    pool = ReferencePool.from_features(level_features)
    hw = [f.shape[2] * f.shape[3] for f in level_features]
    out: list[list[Tensor]] = [[] for _ in level_features]
    with torch.inference_mode():
        for start in range(0, k, batch):
            stop = min(k, start + batch)
            residual = [
                torch.cat(
                    [
                        _residual_excluding(f[i : i + 1], p, pn, slice(i * n, (i + 1) * n))
                        for i in range(start, stop)
                    ]
                )
                for f, p, pn, n in zip(level_features, pool.levels, pool.normed, hw, strict=True)
            ]
            result = projector(residual) if projector is not None else residual
            for level, part in zip(out, result, strict=True):
                level.append(part)
    return [torch.cat(level) for level in out]
