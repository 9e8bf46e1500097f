"""The chart's alert rules and Grafana dashboard query only metrics the workers export.

Every PromQL expression (PrometheusRule rules, dashboard panel targets, dashboard template
variables) is parsed with promql-parser; the metric names of its selectors must be series that
ingest/telemetry.py registers (``PipelineMetrics.series_names``: counters as ``_total``,
histograms as ``_bucket``/``_sum``/``_count``, gauges as is). The rendered chart's checks are in
tests/integration/deploy/test_monitoring_rendered.py (they need the helm binary).
"""

from __future__ import annotations

import pytest
from monitoring_testkit import (  # noqa: F401
    dashboard_exprs,
    exported,
    metric_names,
)


def test_the_extractor_finds_every_selector() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1"}[5m]))) > on (p) '
        '(2 * max by (p) (b)) and time() - {__name__="c"} unless -d offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a[5m])")


def test_an_unknown_metric_would_be_caught(exported) -> None:
    bad = 'sum(rate(adqc_frames_processed_total{job="x"}[5m]))'
    assert not metric_names(bad) <= exported
