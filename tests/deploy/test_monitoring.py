"""The chart's alert rules and Grafana dashboard query only metrics the workers export.

Every PromQL expression (PrometheusRule rules, dashboard panel targets, dashboard template
variables) is parsed with promql-parser; the metric names of its selectors must be series that
ingest/telemetry.py registers (``PipelineMetrics.series_names``: counters as ``_total``,
histograms as ``_bucket``/``_sum``/``_count``, gauges as is). Skipped when helm is absent.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from ingest.settings import TelemetrySettings
from ingest.telemetry import Telemetry

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "adqc"
MONITORING = CHART / "ci" / "monitoring-values.yaml"
DASHBOARD = CHART / "dashboards" / "adqc-overview.json"
#: Grafana's variables, replaced by something PromQL parses
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: label_values(<metric or selector>, <label>) in dashboard variable queries
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$")


def metric_names(expr: str) -> set[str]:
    """Metric names selected anywhere in PromQL ``expr`` (raises on a syntax error)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    found.add(matcher.value)
            return
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                walk(child)
        for child in getattr(node, "args", None) or ():
            walk(child)

    walk(promql_parser.parse(expr))
    return found


def _grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """PromQL of every panel target and every query variable of a dashboard."""
    exprs = [
        _grafana(target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"dashboard variable {var['name']}: unexpected query {query!r}"
        exprs.append(_grafana(match[1]))
    return exprs


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return Telemetry(TelemetrySettings(prometheus_port=None)).metrics.series_names()


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = REPO / ".cache" / "bin" / "helm"
    if not helm.exists():
        pytest.skip(f"helm not found at {helm}: `make servers` installs it")
    done = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "-n", "qc", "-f", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_extractor_finds_every_selector() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1"}[5m]))) > on (p) '
        '(2 * max by (p) (b)) and time() - {__name__="c"} unless -d offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a[5m])")


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


def test_an_unknown_metric_would_be_caught(exported) -> None:
    bad = 'sum(rate(adqc_frames_processed_total{job="x"}[5m]))'
    assert not metric_names(bad) <= exported
