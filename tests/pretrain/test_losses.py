"""ADPretrain losses on constructed cases (docs/METHOD.md section 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.losses import (
    TAU,
    adpretrain_loss,
    angle_labels,
    angle_loss,
    anomaly_norm,
    has_abnormal_tokens,
    norm_labels,
    norm_loss,
)


def _map(tokens: list[list[float]]) -> torch.Tensor:
    """Tokens (a list of C-vectors) -> a [1, C, 1, N] feature map."""
    return torch.tensor(tokens, dtype=torch.float32).T.reshape(1, len(tokens[0]), 1, len(tokens))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- labels


def test_angle_labels_threshold_is_more_than_32_of_196_pixels():
    mask = torch.zeros(1, 28, 28)
    cell = torch.zeros(14 * 14)
    cell[:32] = 1  # exactly 32 -> normal
    mask[0, :14, :14] = cell.reshape(14, 14)
    cell33 = torch.zeros(14 * 14)
    cell33[:33] = 1  # 33 -> abnormal
    mask[0, 14:, 14:] = cell33.reshape(14, 14)
    labels = angle_labels(mask, (2, 2))
    assert labels.tolist() == [[[False, False], [False, True]]]


def test_angle_labels_scale_with_cnn_cell_size():
    # stride 8 at 224: 64 px cells, threshold 32 * 64 / 196 = 10.45 -> 11 px abnormal needed
    mask = torch.zeros(1, 16, 16)
    cell10 = torch.zeros(64)
    cell10[:10] = 1
    cell11 = torch.zeros(64)
    cell11[:11] = 1
    mask[0, :8, :8] = cell10.reshape(8, 8)
    mask[0, 8:, 8:] = cell11.reshape(8, 8)
    labels = angle_labels(mask, (2, 2))
    assert labels.tolist() == [[[False, False], [False, True]]]


def test_norm_labels_are_nearest_neighbour_downsampled():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 0, 0] = 255  # the sampled pixel of cell (0, 0)
    mask[0, 5, 5] = 255  # not a sampled pixel -> stays normal
    labels = norm_labels(mask, (2, 2))
    expected = F.interpolate((mask > 0).float()[:, None], size=(2, 2), mode="nearest")
    assert labels.tolist() == (expected[:, 0] > 0).tolist()
    assert labels[0, 0, 0] and not labels[0, 1, 1]


# ----------------------------------------------------------------------------- angle loss


def test_angle_loss_hand_computed():
    # token 0 normal, token 1 abnormal, centre 0; view 2 rotates token 0 by 90 degrees.
    e1 = _map([[1.0, 0.0], [0.0, 1.0]])
    e2 = _map([[0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([[[False, True]]])
    loss = angle_loss(e1, e2, torch.zeros(2), labels)
    t = 1.0 / TAU
    # positives: token0 <(1,0),(0,1)> = 0; token1 <(0,1),(0,1)> = 1
    # normal z0^1=(1,0): negatives (0,1),(0,1) -> sims 0, 0
    l0_v1 = -0.0 + math.log(2 * math.exp(0.0))
    # normal z0^2=(0,1): negatives sims 1, 1
    l0_v2 = -0.0 + math.log(2 * math.exp(t))
    # abnormal z1^1 = z1^2 = (0,1): negatives (1,0) sim 0 and (0,1) sim 1
    l1 = -t + math.log(math.exp(0.0) + math.exp(t))
    expected = (l0_v1 + l0_v2 + 2 * l1) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _angle_loss_loops(e1, e2, centre, labels, tau=TAU):
    """Reference implementation, one token at a time."""
    z1 = [F.normalize(v - centre, dim=0) for v in e1[0].permute(1, 2, 0).reshape(-1, e1.shape[1])]
    z2 = [F.normalize(v - centre, dim=0) for v in e2[0].permute(1, 2, 0).reshape(-1, e2.shape[1])]
    lab = labels.reshape(-1).tolist()
    everything = [(z, lab[i]) for i, z in enumerate(z1)] + [(z, lab[i]) for i, z in enumerate(z2)]
    losses = []
    for view, other in ((z1, z2), (z2, z1)):
        for i, z in enumerate(view):
            pos = math.exp(float(z @ other[i]) / tau)
            den = sum(math.exp(float(z @ zj) / tau) for zj, lj in everything if lj != lab[i])
            losses.append(-math.log(pos / den))
    return sum(losses) / len(losses)


def test_angle_loss_matches_token_by_token_reference():
    g = torch.Generator().manual_seed(0)
    e1 = torch.randn(1, 5, 2, 3, generator=g)
    e2 = e1 + 0.3 * torch.randn(1, 5, 2, 3, generator=g)
    centre = torch.randn(5, generator=g) * 0.1
    labels = torch.tensor([[[False, True, False], [True, False, False]]])
    got = angle_loss(e1, e2, centre, labels).item()
    assert got == pytest.approx(_angle_loss_loops(e1, e2, centre, labels), rel=1e-4)


def test_angle_loss_zero_and_finite_without_abnormal_tokens():
    e1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    e2 = torch.randn(2, 4, 3, 3)
    loss = angle_loss(e1, e2, torch.zeros(4), torch.zeros(2, 3, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert torch.isfinite(e1.grad).all()


# ----------------------------------------------------------------------------- norm loss


def test_anomaly_norm():
    e = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert anomaly_norm(e).tolist() == pytest.approx([math.sqrt(6.0) - 1.0, 0.0])


def test_norm_loss_hand_computed():
    # |x| = 0.44 -> a = 0.2 (normal); 0 -> a = 0 (normal); 3 -> a = 1 (abnormal)
    e = _map([[0.44], [0.0], [3.0]])
    labels = torch.tensor([[[False, False, True]]])
    r_max = min(0.9 * 1.0, 0.4)
    r_min = 0.99 * r_max
    b = r_max + 0.75
    v_close = [r_min - 0.2, r_min - 0.0]
    expected_close = sum(math.exp(v) * _softplus(v) for v in v_close) / 2
    expected_abn = math.exp(b - 1.0) * _softplus(b - 1.0)
    # no normal token above r_max -> that part is 0
    assert norm_loss(e, labels).item() == pytest.approx(expected_close + expected_abn, rel=1e-5)


def test_norm_loss_r_max_follows_small_abnormal_norms():
    # abnormal a = 0.2 -> r_max = 0.18, r_min = 0.1782, b = 0.93; normal a = 0.3 > r_max
    e = _map([[0.69], [0.44]])  # a = sqrt(1.69) - 1 = 0.3 ; sqrt(1.44) - 1 = 0.2
    labels = torch.tensor([[[False, True]]])
    r_max = 0.9 * 0.2
    b = r_max + 0.75
    expected = math.exp(0.3 - r_max) * _softplus(0.3 - r_max)
    expected += math.exp(b - 0.2) * _softplus(b - 0.2)
    assert norm_loss(e, labels).item() == pytest.approx(expected, rel=1e-5)


def test_norm_loss_without_abnormal_tokens_uses_default_radius():
    e = _map([[0.96], [0.0]])  # a = 0.4 exactly (no violation), a = 0 (below r_min)
    labels = torch.zeros(1, 1, 2, dtype=torch.bool)
    r_min = 0.99 * 0.4
    expected = math.exp(r_min) * _softplus(r_min) / 1  # only token 1 violates
    assert norm_loss(e, labels).item() == pytest.approx(expected, rel=1e-5)


def test_norm_loss_zero_when_all_constraints_hold():
    e = _map([[0.9544], [8.0]])  # a = 0.398 in [r_min, r_max]; abnormal a = 2 > b = 1.15
    labels = torch.tensor([[[False, True]]])
    assert norm_loss(e, labels).item() == 0.0


def test_norm_loss_weights_are_detached():
    x = torch.tensor([[[[3.0]]]], requires_grad=True)  # one abnormal token, a = 1 < b
    norm_loss(x, torch.ones(1, 1, 1, dtype=torch.bool)).backward()
    a = math.sqrt(4.0) - 1.0
    b = 0.4 + 0.75
    v = b - a
    sigmoid = 1 / (1 + math.exp(-v))
    da_dx = 0.5 / math.sqrt(4.0)
    # d/dx [exp(v).detach() * softplus(v)] = exp(v) * sigmoid(v) * (-da/dx)
    assert x.grad.item() == pytest.approx(-math.exp(v) * sigmoid * da_dx, rel=1e-5)


# ----------------------------------------------------------------------------- total


def test_total_loss_finite_with_no_abnormal_tokens():
    e1 = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    e2 = [t + 0.1 for t in e1]
    mask = torch.zeros(2, 32, 32)
    loss, parts = adpretrain_loss(e1, e2, [torch.zeros(8), torch.zeros(16)], mask)
    assert torch.isfinite(loss)
    assert parts["angle"] == 0.0 and parts["abnormal_tokens"] == 0.0
    assert not has_abnormal_tokens(mask, [(4, 4), (2, 2)])


def _separation_case(separation: float):
    g = torch.Generator().manual_seed(1)
    b, c, h, w = 2, 8, 4, 4
    mask = torch.zeros(b, 32, 32)
    mask[:, :16, :16] = 1  # top-left quadrant abnormal at every level
    lab = norm_labels(mask, (h, w))[:, None].float()
    direction = torch.zeros(1, c, 1, 1)
    direction[0, 0] = 1.0
    base = 0.02 * torch.randn(b, c, h, w, generator=g)
    e1 = base + lab * separation * direction
    e2 = base + 0.01 * torch.randn(b, c, h, w, generator=g) + lab * separation * direction
    loss, _ = adpretrain_loss([e1], [e2], [torch.zeros(c)], mask)
    return loss.item()


def test_loss_decreases_when_classes_separate():
    losses = [_separation_case(s) for s in (0.0, 1.0, 4.0, 10.0)]
    assert all(math.isfinite(x) for x in losses)
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.5 * losses[0]


class _Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        return self.conv(x)


def test_gradient_reaches_only_the_projector():
    torch.manual_seed(0)
    backbone = _Frozen()
    projector = nn.Conv2d(8, 8, 1)
    x = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 32, 32)
    mask[0, 8:24, 8:24] = 1
    with torch.no_grad():
        r1 = backbone(x)
        r2 = backbone(x * 0.9)
    loss, _ = adpretrain_loss([projector(r1)], [projector(r2)], [torch.zeros(8)], mask)
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
