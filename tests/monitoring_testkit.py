"""PromQL and dashboard helpers shared by the monitoring tests (unit: extractor and exported
metric names; integration: the chart rendered by helm)."""

from __future__ import annotations

import re
from typing import Any

import promql_parser
import pytest
from helm_testkit import CHART

from ingest.settings import TelemetrySettings
from ingest.telemetry import Telemetry

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
