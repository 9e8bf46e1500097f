"""Parts the detectors share (as anomalib's ``models/components``): nearest-neighbour
distances and the greedy k-center coreset (PatchCore), the Ledoit-Wolf covariance (PaDiM), and
the post-processing from token scores to anomaly maps to image scores.

Post-processing has one definition for the whole project (evaluation, onboarding, serving):
per-level token score maps are upsampled bilinearly to the input size, averaged over levels,
and smoothed with a separable Gaussian (sigma 4, reflect padding, plain torch conv:
deterministic on CPU and GPU). The image score is the maximum of the smoothed map. Scores stay
raw: no per-image min-max normalisation, so they are comparable across frames and batches.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.detectors.onnx_search import augmented_bank, nearest_distances_ort, session

DEFAULT_SIGMA = 4.0


def _size2(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian; radius = 4 sigma (33 taps for sigma 4, as anomalib)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(maps: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Separable Gaussian smoothing of [B,H,W] maps (reflect padding; sigma <= 0: identity)."""
    if maps.ndim != 3:
        raise ValueError(f"gaussian_blur expects [B,H,W] maps, got shape {tuple(maps.shape)}")
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.dtype).to(maps.device)
    r = (k.numel() - 1) // 2
    x = maps.unsqueeze(1)
    h, w = x.shape[-2:]
    x = F.pad(x, (r, r, r, r), mode=blur_padding((h, w), sigma))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.squeeze(1)


def upsample(maps: Tensor, image_size: int | Sequence[int]) -> Tensor:
    """Bilinear upsampling of [B,h,w] token maps to the input size (align_corners=False)."""
    size = _size2(image_size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def blur_padding(size: tuple[int, int], sigma: float) -> str:
    """``gaussian_blur``'s padding for [.., H, W] maps: reflect, or replicate for tiny maps
    (reflect padding needs pad < size)."""
    r = int(4.0 * sigma + 0.5)
    return "reflect" if r < size[0] and r < size[1] else "replicate"


@functools.lru_cache(maxsize=64)
def axis_operator(n_in: int, n_out: int, sigma: float, padding: str) -> Tensor:
    """One axis of ``upsample`` then ``gaussian_blur`` as a [n_out, n_in] matrix: both are
    linear and separable, so a map's post-processing is ``A_h @ scores @ A_w.T``."""
    x = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # [n_in, 1, n_in]: basis rows
    if n_out != n_in:
        x = F.interpolate(x, size=n_out, mode="linear", align_corners=False)
    if sigma > 0:
        k = gaussian_kernel1d(sigma, torch.float64)
        r = (k.numel() - 1) // 2
        x = F.conv1d(F.pad(x, (r, r), mode=padding), k.view(1, 1, -1))
    return x[:, 0].t().float().contiguous()


def anomaly_map(
    level_scores: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """Per-level token scores [B,h_l,w_l] -> smoothed anomaly maps [B,S,S] (float32).

    Bilinear upsampling of every level to ``image_size``, mean over levels, Gaussian sigma 4
    (``upsample`` + ``gaussian_blur``), computed as two small matrix products per level
    (``axis_operator``): the same maps to float rounding, without a [B,S,S] convolution.
    """
    if len(level_scores) == 0:
        raise ValueError("anomaly_map needs at least one level of scores")
    batch = level_scores[0].shape[0]
    size = _size2(image_size)
    padding = blur_padding(size, sigma)
    acc = None
    for s in level_scores:
        if s.ndim != 3 or s.shape[0] != batch:
            raise ValueError(
                f"every level must be [B,h,w] with B={batch}, got shape {tuple(s.shape)}"
            )
        rows = axis_operator(s.shape[1], size[0], sigma, padding).to(s.device)
        cols = axis_operator(s.shape[2], size[1], sigma, padding).to(s.device)
        out = rows @ s.float() @ cols.t()
        acc = out if acc is None else acc + out
    return acc / len(level_scores)


def image_scores(maps: Tensor) -> Tensor:
    """Image score = maximum of each anomaly map: [B,H,W] -> [B]."""
    return maps.flatten(1).amax(dim=1)


# ------------------------------------------------------------------- nearest neighbours, coreset


def nearest_distances(
    queries: Tensor,
    bank: Tensor,
    max_chunk_elems: int = 1 << 24,
    search_dtype: torch.dtype | None = None,
    runtime: str = "auto",
) -> Tensor:
    """L2 distance of every query row [Q,D] to its nearest bank row [M,D] -> [Q].

    Queries are processed in chunks of at most ``max_chunk_elems`` distances (~64 MB of
    float32 by default), so memory stays bounded whatever Q and M are. ``runtime``: "auto" runs
    a float32 search on CPU in ONNX Runtime when it is installed (``onnx_search``: 1.6x
    torch on the default's shape in the stages bench, about equal on small banks), else
    torch; "torch" / "onnxruntime" force one. ``search_dtype`` (torch.bfloat16 /
    torch.float16, torch only): the q.b products in that precision, norms and sums in float32
    (distances then carry that precision's error).
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} disagree")
    if runtime not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"runtime must be auto, torch or onnxruntime, not {runtime!r}")
    m = bank.shape[0]
    chunk = max(1, min(queries.shape[0], max_chunk_elems // max(m, 1)))
    low = search_dtype is not None and search_dtype != torch.float32
    if runtime != "torch" and not low and queries.device.type == "cpu":
        ort_session = session(torch.get_num_threads())
        if ort_session is not None:
            return nearest_distances_ort(queries, augmented_bank(bank), chunk, ort_session)
    if runtime == "onnxruntime":
        raise RuntimeError("runtime='onnxruntime' needs onnxruntime, a CPU tensor and float32")
    q = queries.float()
    b = bank.float()
    b_sq = (b * b).sum(dim=1)
    bt = b.t()
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
        # ||q||^2 is constant per row: added after the minimum (rounding is monotone)
        out[start : start + n] = d.amin(dim=1)
    out.add_((q * q).sum(dim=1))
    return out.clamp_(min=0.0).sqrt_()


def _random_projection(x: Tensor, project_dim: int, generator: torch.Generator) -> Tensor:
    """``x`` [N,D] through a Gaussian random projection to ``project_dim`` columns (as is when
    ``project_dim`` is 0 or not below D)."""
    if not project_dim or x.shape[1] <= project_dim:
        return x
    proj = torch.randn(x.shape[1], project_dim, generator=generator) / math.sqrt(project_dim)
    return x @ proj.to(x.device)


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
    x = _random_projection(features.float(), project_dim, g).contiguous()
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


def blocked_coreset(
    features: Tensor, ratio: float, block_rows: int, project_dim: int = 128, seed: int = 0
) -> Tensor:
    """Greedy k-center within consecutive blocks of ``block_rows`` rows, ``ratio`` of each.

    One greedy pass over N rows costs N x picks distance updates, each a sweep over all N
    rows, so full-shot banks (~160k patches) take minutes and outgrow the CPU caches. Blocks
    cut the work by the number of blocks and keep each sweep in cache. Every row is still
    within its block's covering radius of a selected row; the bank keeps the same size, with
    some redundancy across blocks. Indices are global and increasing per block.
    """
    n = features.shape[0]
    if block_rows <= 0 or n <= block_rows:
        return greedy_coreset(features, max(1, math.ceil(ratio * n)), project_dim, seed)
    x = _random_projection(features.float(), project_dim, torch.Generator().manual_seed(seed))
    parts = []
    for b, start in enumerate(range(0, n, block_rows)):
        block = x[start : start + block_rows]
        picks = max(1, math.ceil(ratio * block.shape[0]))
        parts.append(start + greedy_coreset(block, picks, project_dim=0, seed=seed + b))
    return torch.cat(parts)


# ---------------------------------------------------------------------------- covariance


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
