"""Chart paths and the helm binary shared by the Helm chart tests (unit: values files and
chart sources; integration: `helm lint` / `helm template` / NOTES)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "adqc"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GPU_STRIMZI = CHART / "ci" / "gpu-strimzi-values.yaml"
EXTERNAL = CHART / "ci" / "external-redis-pvc-values.yaml"
CPU_ONLY = CHART / "ci" / "cpu-only-values.yaml"
KEDA = CHART / "ci" / "keda-values.yaml"
MONITORING = CHART / "ci" / "monitoring-values.yaml"
MTLS = CHART / "ci" / "mtls-values.yaml"
DURABLE = CHART / "ci" / "durable-store-values.yaml"
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {
    "KafkaTopic",
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
}


def helm_binary() -> Path:
    """The helm binary `make servers` installs into .cache/bin (skips the test when absent)."""
    binary = REPO / ".cache" / "bin" / "helm"
    if not binary.exists():
        pytest.skip(f"helm not found at {binary}: `make servers` installs it")
    return binary
