"""The normal-only threshold rules of benchmarks/peer/calibration_rules.py (issue 11, section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.peer.calibration_rules import group_shift, operating_point, rule_scores
from inference.calibration import threshold_rule

LOO = np.array([1.0, 1.1, 1.2, 0.9, 1.05, 1.15, 0.95, 1.0])
VIEWS = np.vstack([LOO + 0.5, LOO + 0.1, LOO - 0.2])


def test_rules_feed_the_scores_the_docs_name():
    assert np.array_equal(rule_scores("R0", LOO, VIEWS), LOO)
    assert np.array_equal(rule_scores("R3", LOO, VIEWS), LOO)  # R3 bounds them on the log scale
    assert rule_scores("R1", LOO, VIEWS).shape == (32,)
    assert np.array_equal(rule_scores("R2", LOO, VIEWS), LOO + 0.5)  # the worst view per shot
    with pytest.raises(ValueError, match="unknown rule"):
        rule_scores("R9", LOO, VIEWS)


def test_operating_point_counts_alarms_above_each_groups_threshold():
    threshold, _ = threshold_rule(LOO.tolist(), 0.01)
    test = np.array([threshold - 0.01, threshold + 0.01, threshold + 1.0, threshold - 1.0])
    labels = np.array([0, 0, 1, 1])
    group = {"test": test, "labels": labels, "loo": LOO, "views": VIEWS}
    r0 = operating_point([group, group], "R0")
    assert r0 == {
        "false_alarm_rate": 0.5,
        "detection_rate": 0.5,
        "n_normal": 4,
        "n_defective": 4,
    }
    # the worst view raises the threshold above every test score but the defect at +1.0
    r2 = operating_point([group], "R2")
    assert r2["false_alarm_rate"] == 0.0 and r2["detection_rate"] == 0.5
    assert operating_point([{**group, "labels": np.ones(4, int)}], "R0")["false_alarm_rate"] is None
    # R3's log-scale bound sits above R0's for these right-tailed scores: the +0.01 normal passes
    log_threshold, _ = threshold_rule(LOO.tolist(), 0.01, scale="log")
    assert log_threshold > threshold + 0.01
    assert operating_point([group], "R3")["false_alarm_rate"] == 0.0


def test_group_shift_tells_a_shifted_group_from_a_predicted_one():
    threshold, _ = threshold_rule(LOO.tolist(), 0.01)
    labels = np.array([0, 0, 0, 1])
    predicted = {"test": np.array([0.9, 1.0, 1.1, 3.0]), "labels": labels, "loo": LOO}
    shifted = {"test": 2 * np.array([0.9, 1.0, 1.1, 3.0]), "labels": labels, "loo": LOO}
    near, far = group_shift([predicted, shifted])
    assert near["shift"] == pytest.approx(1.0 / LOO.mean(), abs=1e-3)
    assert far["shift"] == pytest.approx(2.0 / LOO.mean(), abs=1e-3)
    assert near["false_alarms"] == 0 and far["false_alarms"] == 3
    assert near["threshold"] == far["threshold"] == pytest.approx(threshold, abs=1e-4)
    assert near["n_good"] == 3 and near["good_max"] == 1.1 and near["loo_max"] == 1.2
    none = group_shift([{**predicted, "labels": np.ones(4, int)}])[0]
    assert none["good_median"] is None and none["false_alarms"] == 0
