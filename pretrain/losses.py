"""ADPretrain losses: angle- and norm-oriented contrastive losses and patch labels.

Implements section 5 of the method description (docs/METHOD.md). Every function
works on one feature level; :func:`adpretrain_loss` sums them over levels (all weights 1):

    L_l = L_angle(e1, e2) + L_norm(e1) + L_norm(e2)

where ``e1``/``e2`` are the projected residual features of two photometric views of the same
images (geometry unchanged, so both views share one mask).

Patch labels come from the pixel masks at the model input size:

* angle loss: a token is abnormal when more than 32 of the 196 pixels of its 14x14 cell at
  224 px are abnormal (about 16 %). For other cell sizes (CNN strides 8/16/32, other input
  sizes) the pixel threshold scales with the cell area: ``count > 32 * area / 196``.
* norm loss: the mask is nearest-neighbour downsampled to the level's ``h x w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

TAU = 0.15
ANGLE_PIXEL_FRACTION = 32.0 / 196.0  # > 32 abnormal pixels of a 14x14 cell
R_MAX_CAP = 0.4  # r_max default and cap
R_MIN_FACTOR = 0.99
NORM_MARGIN = 0.75
R_MAX_ABNORMAL_FACTOR = 0.9

__all__ = [
    "TAU",
    "adpretrain_loss",
    "angle_labels",
    "angle_loss",
    "anomaly_norm",
    "has_abnormal_tokens",
    "norm_labels",
    "norm_loss",
]


def _as_mask(mask: Tensor) -> Tensor:
    """[B,H,W] or [B,1,H,W] (bool/uint8/float, >0 = abnormal) -> float [B,1,H,W] in {0,1}."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B,H,W] or [B,1,H,W], got {tuple(mask.shape)}")
    return (mask > 0).float()


def angle_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Token labels for the angle loss: True where the token's cell is > 32/196 abnormal.

    ``mask`` is the pixel mask at the model input size ([B,H,W], >0 = abnormal); ``size`` the
    level's ``(h, w)``. Each token owns an ``H/h x W/w`` cell; it is abnormal when its count of
    abnormal pixels exceeds ``32 * cell_area / 196`` (exactly "more than 32 of 196" for 14x14).
    Returns bool [B, h, w].
    """
    m = _as_mask(mask)
    fraction = F.adaptive_avg_pool2d(m, size)  # abnormal fraction per cell
    # compare counts with a small tolerance so that exactly 32/196 stays normal
    return (fraction > ANGLE_PIXEL_FRACTION + 1e-6).squeeze(1)


def norm_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Token labels for the norm loss: the mask nearest-neighbour downsampled to ``size``.

    Returns bool [B, h, w].
    """
    m = _as_mask(mask)
    return (F.interpolate(m, size=size, mode="nearest") > 0.5).squeeze(1)


def _tokens(x: Tensor) -> Tensor:
    """[B,C,h,w] -> [B*h*w, C] (token order: batch, row, column)."""
    if x.dim() != 4:
        raise ValueError(f"expected a [B,C,h,w] feature map, got {tuple(x.shape)}")
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def anomaly_norm(e: Tensor, dim: int = -1) -> Tensor:
    """a(e) = sqrt(||e||_2 + 1) - 1 along ``dim`` (the FeatureNorm token score)."""
    return torch.sqrt(torch.linalg.vector_norm(e, dim=dim) + 1.0) - 1.0


def angle_loss(e1: Tensor, e2: Tensor, centre: Tensor, labels: Tensor, tau: float = TAU) -> Tensor:
    """Angle-oriented contrastive loss for one level.

    ``e1``, ``e2``: projected residuals of the two views [B,C,h,w]; ``centre``: [C], the mean
    normal un-projected residual of this level; ``labels``: bool [B,h,w] (angle labels, shared
    by both views). With z = normalize(e - c), token i of one view has its positive at the same
    position of the other view, and its negatives are ALL tokens of the other class in the batch
    over both views; the positive is not in the denominator:

        l_i = -<z_i, z_i'>/tau + log sum_{j in other class} exp(<z_i, z_j>/tau)

    The result is the mean over the 2N tokens. Without negatives (no abnormal token, or no
    normal one) the loss is 0 (kept in the graph so ``backward`` still works).
    """
    z1 = F.normalize(_tokens(e1) - centre, dim=1)
    z2 = F.normalize(_tokens(e2) - centre, dim=1)
    lab = labels.reshape(-1).bool()
    if lab.numel() != z1.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(e1.shape)}")
    n_abn = int(lab.sum())
    if n_abn == 0 or n_abn == lab.numel():
        return (e1.sum() + e2.sum()) * 0.0
    positive = (z1 * z2).sum(dim=1) / tau  # [N], same for both views
    z = torch.cat([z1, z2])  # [2N, C]
    lab2 = torch.cat([lab, lab])
    zn, za = z[~lab2], z[lab2]
    sim = zn @ za.T / tau  # [2Nn, 2Na]: the normal/abnormal pairs, used both ways
    lse_normal = torch.logsumexp(sim, dim=1)  # normal token vs all abnormal tokens
    lse_abnormal = torch.logsumexp(sim, dim=0)  # abnormal token vs all normal tokens
    pos2 = torch.cat([positive, positive])
    total = (lse_normal - pos2[~lab2]).sum() + (lse_abnormal - pos2[lab2]).sum()
    return total / z.shape[0]


def _barrier(violation: Tensor) -> Tensor:
    """mean[exp(v) * softplus(v)] with the exponential weight detached; 0 for an empty set."""
    if violation.numel() == 0:
        return violation.sum() * 0.0
    return (torch.exp(violation.detach()) * F.softplus(violation)).mean()


def norm_loss(e: Tensor, labels: Tensor) -> Tensor:
    """Norm-oriented contrastive loss for one view of one level.

    ``e``: projected residuals [B,C,h,w]; ``labels``: bool [B,h,w] (norm labels). With
    a = sqrt(||e|| + 1) - 1 per token, r_max = min(0.9 * min_abnormal a, 0.4) (0.4 without
    abnormal tokens), r_min = 0.99 r_max and b = r_max + 0.75:

    * normal tokens with a > r_max:   mean[exp(a - r_max) softplus(a - r_max)]
    * normal tokens with a < r_min:   mean[exp(r_min - a) softplus(r_min - a)]
    * abnormal tokens with a < b:     mean[exp(b - a) softplus(b - a)]

    The radii and the exponential weights are detached; each part is 0 when its set is empty.
    """
    a = anomaly_norm(_tokens(e), dim=1)
    lab = labels.reshape(-1).bool()
    if lab.numel() != a.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(e.shape)}")
    a_normal, a_abnormal = a[~lab], a[lab]
    if a_abnormal.numel():
        r_max = min(R_MAX_ABNORMAL_FACTOR * float(a_abnormal.detach().min()), R_MAX_CAP)
    else:
        r_max = R_MAX_CAP
    r_min = R_MIN_FACTOR * r_max
    b = r_max + NORM_MARGIN
    too_far = a_normal[a_normal > r_max] - r_max
    too_close = r_min - a_normal[a_normal < r_min]
    abnormal_short = b - a_abnormal[a_abnormal < b]
    return _barrier(too_far) + _barrier(too_close) + _barrier(abnormal_short)


def adpretrain_loss(
    e1: Sequence[Tensor],
    e2: Sequence[Tensor],
    centres: Sequence[Tensor],
    mask: Tensor,
    tau: float = TAU,
) -> tuple[Tensor, dict[str, float]]:
    """Total ADPretrain loss summed over levels, plus its parts for logging.

    ``e1``/``e2``: per level projected residuals [B,C_l,h_l,w_l] of the two views; ``centres``:
    per level [C_l]; ``mask``: pixel mask [B,H,W] at the model input size (shared by both views).
    Returns ``(loss, parts)`` where ``parts`` holds floats: ``angle``, ``norm``,
    ``abnormal_tokens`` (norm labels, over levels).
    """
    if not (len(e1) == len(e2) == len(centres)):
        raise ValueError("e1, e2 and centres must have one entry per level")
    total = e1[0].new_zeros(())
    angle_sum = 0.0
    norm_sum = 0.0
    abnormal = 0
    for f1, f2, c in zip(e1, e2, centres, strict=True):
        size = (f1.shape[-2], f1.shape[-1])
        la = angle_labels(mask, size).to(f1.device)
        ln = norm_labels(mask, size).to(f1.device)
        l_angle = angle_loss(f1, f2, c.to(f1), la, tau)
        l_norm = norm_loss(f1, ln) + norm_loss(f2, ln)
        total = total + l_angle + l_norm
        angle_sum += float(l_angle.detach())
        norm_sum += float(l_norm.detach())
        abnormal += int(ln.sum())
    return total, {"angle": angle_sum, "norm": norm_sum, "abnormal_tokens": float(abnormal)}


def has_abnormal_tokens(mask: Tensor, sizes: Sequence[tuple[int, int]]) -> bool:
    """True when some level has an abnormal token under either labelling rule."""
    return any(bool(angle_labels(mask, s).any()) or bool(norm_labels(mask, s).any()) for s in sizes)
