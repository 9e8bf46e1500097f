"""The threshold rule: both branches, its false-alarm behaviour, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from inference.calibration import (
    EMPIRICAL_MIN_TAIL,
    MAX_MARGIN,
    CalibrationError,
    calibrate,
    threshold_rule,
)


def test_small_sample_uses_the_t_prediction_bound():
    scores = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.0]
    threshold, rule = threshold_rule(scores, 0.01)
    n = len(scores)
    expected = np.mean(scores) + stats.t.ppf(0.99, n - 1) * np.std(scores, ddof=1) * math.sqrt(
        1 + 1 / n
    )
    assert threshold == pytest.approx(expected)
    assert "prediction bound" in rule
    assert threshold > max(scores)


def test_small_sample_never_below_the_highest_normal_plus_margin():
    scores = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0001]  # almost no spread
    threshold, rule = threshold_rule(scores, 0.01)
    assert threshold == pytest.approx(1.0001 * (1 + MAX_MARGIN))
    assert "floor" in rule


def test_large_sample_uses_the_empirical_quantile():
    rng = np.random.default_rng(0)
    scores = rng.normal(5.0, 1.0, size=2000)
    assert len(scores) * 0.01 >= EMPIRICAL_MIN_TAIL
    threshold, rule = threshold_rule(scores, 0.01)
    assert "empirical" in rule
    assert np.mean(scores > threshold) <= 0.01
    assert threshold == pytest.approx(np.quantile(scores, 0.99), abs=0.05)


@pytest.mark.parametrize("n", [4, 8])
def test_small_sample_false_alarm_rate_is_near_the_target_for_normal_scores(n):
    # The t bound is exact for Gaussian scores: averaged over many onboardings, a fresh normal
    # score exceeds the threshold with probability target_far (the floor only makes it rarer).
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(3000):
        scores = rng.normal(10.0, 1.0, size=n)
        threshold, _ = threshold_rule(scores, 0.01)
        rates.append(stats.norm.sf(threshold - 10.0))
    assert 0.005 <= float(np.mean(rates)) <= 0.013  # Monte-Carlo noise: about +-0.001


def test_calibration_record_carries_the_statistics():
    calibration = calibrate([1.0, 2.0, 3.0], 0.05, method="held-out")
    assert calibration.method == "held-out"
    assert calibration.n_normals == 3
    assert calibration.score_mean == pytest.approx(2.0)
    assert calibration.score_std == pytest.approx(1.0)
    assert calibration.threshold > 3.0
    assert calibration.rule


@pytest.mark.parametrize(
    ("scores", "far", "message"),
    [
        ([1.0], 0.01, "at least 2 normal scores"),
        ([], 0.01, "at least 2 normal scores"),
        ([1.0, 2.0], 0.0, "in \\(0, 1\\)"),
        ([1.0, 2.0], 1.5, "in \\(0, 1\\)"),
        ([1.0, float("nan")], 0.01, "NaN"),
    ],
)
def test_refusals_say_why(scores, far, message):
    with pytest.raises(CalibrationError, match=message):
        threshold_rule(scores, far)


@pytest.mark.parametrize("n", [4, 8])
def test_log_scale_bound_holds_the_target_for_log_normal_scores(n):
    # Right-skewed (log-normal) scores: the bound on log scores is exact for them, the linear
    # bound sits too low in the tail and alarms more often than the target.
    rng = np.random.default_rng(2)
    sigma = 0.3
    log_rates, linear_rates = [], []
    for _ in range(3000):
        scores = np.exp(rng.normal(0.0, sigma, size=n))
        log_threshold, rule = threshold_rule(scores, 0.01, scale="log")
        linear_threshold, _ = threshold_rule(scores, 0.01)
        log_rates.append(stats.norm.sf(math.log(log_threshold) / sigma))
        linear_rates.append(stats.norm.sf(math.log(linear_threshold) / sigma))
    assert 0.005 <= float(np.mean(log_rates)) <= 0.013
    assert float(np.mean(linear_rates)) > float(np.mean(log_rates))


def test_log_scale_keeps_the_linear_bound_when_a_score_is_not_positive():
    scores = [0.0, 1.0, 1.2, 0.8]
    assert threshold_rule(scores, 0.01, scale="log") == threshold_rule(scores, 0.01)
    _, rule = threshold_rule([1.0, 1.3, 0.9, 1.1], 0.01, scale="log")
    assert "on log scores" in rule
