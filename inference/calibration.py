"""Decision thresholds from normal images only.

The threshold is the score above which a frame is called defective, chosen so that about
``target_far`` of normal frames would be (falsely) called defective. Only normal scores are
available at onboarding, and usually few of them (the K shots scored leave-one-out, or a few
held-out normals), so the rule has two branches (justified in docs/ONBOARDING.md):

* **empirical** when ``n * target_far >= EMPIRICAL_MIN_TAIL`` (at least five normal scores are
  expected above the threshold, so the quantile is backed by data): the (1 - target_far)
  quantile of the normal scores, taking the next observed score up (numpy ``method="higher"``),
  so at most ``target_far`` of the calibration normals lie above it.
* **small-sample** otherwise: the one-sided normal-theory prediction bound for one new normal
  score, ``mean + t(1 - target_far, n - 1) * std * sqrt(1 + 1/n)`` (Student t, sample std),
  and never below ``max(normal scores) + MAX_MARGIN * |max|``: a normal score already seen must
  not alarm, with a small cushion for the optimism of a tiny sample.

Scores are raw detector scores (maximum of the anomaly map; never normalised per image), so one
threshold holds across frames and batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats

from inference.records import Calibration

DEFAULT_TARGET_FAR = 0.01
#: use the empirical quantile once this many calibration normals are expected above it
EMPIRICAL_MIN_TAIL = 5.0
#: small-sample floor: the highest normal score plus this fraction of its magnitude
MAX_MARGIN = 0.05
#: fewest normal scores a threshold is computed from (a standard deviation needs two)
MIN_NORMALS = 2


class CalibrationError(ValueError):
    """Calibration cannot produce a threshold from what it was given."""


def threshold_rule(
    scores: Sequence[float], target_far: float, scale: Literal["linear", "log"] = "linear"
) -> tuple[float, str]:
    """The threshold for these normal scores and the name of the branch that produced it.

    ``scale="log"`` computes the small-sample bound on the logarithm of the scores (when all
    are positive) and exponentiates it: candidate R3 of docs/ONBOARDING.md."""
    values = np.asarray(scores, dtype=np.float64)
    if not 0.0 < target_far < 1.0:
        raise CalibrationError(f"target false-alarm rate must be in (0, 1), got {target_far}")
    if values.ndim != 1 or values.size < MIN_NORMALS:
        raise CalibrationError(
            f"need at least {MIN_NORMALS} normal scores to set a threshold, got {values.size}; "
            "use at least 2 shots or give --calibration-images"
        )
    if not np.isfinite(values).all():
        raise CalibrationError("normal scores contain NaN or infinite values")
    n = values.size
    if n * target_far >= EMPIRICAL_MIN_TAIL:
        quantile = float(np.quantile(values, 1.0 - target_far, method="higher"))
        return quantile, f"empirical {1 - target_far:.4g} quantile of {n} normal scores"
    t = float(stats.t.ppf(1.0 - target_far, df=n - 1))
    on_log = scale == "log" and bool((values > 0).all())
    bound = _prediction_bound(np.log(values) if on_log else values, t)
    bound = math.exp(bound) if on_log else bound
    top = float(values.max())
    floor = top + MAX_MARGIN * abs(top)
    if bound >= floor:
        where = " on log scores" if on_log else ""
        return bound, f"small-sample t prediction bound{where} (n={n}, t={t:.3f})"
    return floor, f"small-sample floor: max normal score + {MAX_MARGIN:.0%} (n={n})"


def _prediction_bound(values: np.ndarray, t: float) -> float:
    """One-sided normal-theory prediction bound for one new value: mean + t s sqrt(1 + 1/n)."""
    n = values.size
    return float(values.mean()) + t * float(values.std(ddof=1)) * math.sqrt(1.0 + 1.0 / n)


def calibrate(
    scores: Sequence[float],
    target_far: float = DEFAULT_TARGET_FAR,
    method: Literal["leave-one-out", "held-out"] = "leave-one-out",
) -> Calibration:
    """A :class:`Calibration` for these normal scores (see the module docstring)."""
    threshold, rule = threshold_rule(scores, target_far)
    values = [float(s) for s in scores]
    return Calibration(
        threshold=threshold,
        target_far=target_far,
        method=method,
        n_normals=len(values),
        normal_scores=values,
        score_mean=float(np.mean(values)),
        score_std=float(np.std(values, ddof=1)),
        rule=rule,
    )
