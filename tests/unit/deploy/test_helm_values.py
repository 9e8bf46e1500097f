"""The Helm chart: real `helm lint` / `helm template`, manifests validated offline.

Core kinds are validated with kubernetes-validate (bundled OpenAPI schemas, strict: unknown
fields fail); the custom resources (Strimzi KafkaTopic, Prometheus ServiceMonitor and
PrometheusRule, KEDA ScaledObject and TriggerAuthentication) have no bundled schema and are
checked field by field. The worker's rendered serve.yaml is loaded with the real settings
loader, with the environment the Deployment sets (Secrets resolved, $(VAR) expanded as the
kubelet does). Every value set under helm/adqc/ci/ is linted, rendered and validated.
Skipped when helm is absent (`make servers` / `make test` install it into .cache/bin).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "adqc"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GPU_STRIMZI = CHART / "ci" / "gpu-strimzi-values.yaml"
EXTERNAL = CHART / "ci" / "external-redis-pvc-values.yaml"
CPU_ONLY = CHART / "ci" / "cpu-only-values.yaml"
KEDA = CHART / "ci" / "keda-values.yaml"
MONITORING = CHART / "ci" / "monitoring-values.yaml"
MTLS = CHART / "ci" / "mtls-values.yaml"
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {
    "KafkaTopic",
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
}


def test_ci_value_sets_are_all_there():
    names = {p.name for p in CI_VALUES}
    for values in (GPU_STRIMZI, EXTERNAL, CPU_ONLY, KEDA, MONITORING, MTLS):
        assert values.name in names
