"""The Helm chart's ci/ value sets are all there (no helm needed; each set is linted, rendered
and validated by tests/integration/deploy/test_helm.py)."""

from __future__ import annotations

from helm_testkit import (
    CI_VALUES,
    CPU_ONLY,
    DURABLE,
    EXTERNAL,
    GPU_STRIMZI,
    KEDA,
    MONITORING,
    MTLS,
)


def test_ci_value_sets_are_all_there():
    names = {p.name for p in CI_VALUES}
    for values in (GPU_STRIMZI, EXTERNAL, CPU_ONLY, KEDA, MONITORING, MTLS, DURABLE):
        assert values.name in names
