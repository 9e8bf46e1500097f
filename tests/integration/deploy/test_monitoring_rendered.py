"""The chart's alert rules and Grafana dashboard query only metrics the workers export.

Every PromQL expression (PrometheusRule rules, dashboard panel targets, dashboard template
variables) is parsed with promql-parser; the metric names of its selectors must be series that
ingest/telemetry.py registers (``PipelineMetrics.series_names``: counters as ``_total``,
histograms as ``_bucket``/``_sum``/``_count``, gauges as is). Skipped when helm is absent.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml
from helm_testkit import CHART, MONITORING, helm_binary
from monitoring_testkit import (  # noqa: F401
    DASHBOARD,
    dashboard_exprs,
    exported,
    metric_names,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = helm_binary()
    done = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "-n", "qc", "-f", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_alert_rules_query_exported_metrics(rendered, exported) -> None:
    (rule,) = [d for d in rendered if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "AdqcConsumerLagHigh",
        "AdqcAlarmRateAboveTarget",
        "AdqcLatencyP99High",
        "AdqcDeadLetterRateHigh",
        "AdqcWorkerStalled",
    }
    used: set[str] = set()
    for name, alert in alerts.items():
        names = metric_names(alert["expr"])
        assert names, name
        assert names <= exported, f"{name} queries unknown metrics {names - exported}"
        used |= names
        assert 'job="rel-adqc-worker"' in alert["expr"] and 'namespace="qc"' in alert["expr"]
    assert {"adqc_consumer_lag", "adqc_alarm_rate_target", "adqc_frames_failed_total"} <= used
    assert "adqc_e2e_latency_seconds_bucket" in used
    rate = alerts["AdqcAlarmRateAboveTarget"]["expr"]
    assert "[2h]" in rate and "3 * max by" in rate  # monitoring-values: window 2h, factor 3


def test_dashboard_queries_exported_metrics(rendered, exported) -> None:
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap" and "adqc-overview.json" in d["data"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "adqc"}
    dashboard = json.loads(cm["data"]["adqc-overview.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())  # shipped unchanged
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"dashboard queries unknown metrics {names - exported}: {expr}"
        used |= names
    for needed in (
        "adqc_score_ratio_bucket",
        "adqc_alarm_rate",
        "adqc_alarm_rate_target",
        "adqc_consumer_lag",
        "adqc_frames_out_total",
    ):
        assert needed in used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
