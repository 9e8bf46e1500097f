"""The Helm chart: real `helm lint` / `helm template`, manifests validated offline.

Core kinds are validated with kubernetes-validate (bundled OpenAPI schemas, strict: unknown
fields fail); the custom resources (Strimzi KafkaTopic, Prometheus ServiceMonitor) have no
bundled schema and are checked field by field. The worker's rendered serve.yaml is loaded
with the real settings loader, with the environment the Deployment sets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "adqc"
GPU_STRIMZI = CHART / "ci" / "gpu-strimzi-values.yaml"
EXTERNAL = CHART / "ci" / "external-redis-pvc-values.yaml"
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {"KafkaTopic", "ServiceMonitor"}


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = REPO / ".cache" / "bin" / "helm"
    if not binary.exists():
        pytest.fail(
            f"helm not found at {binary}: run `make servers` (bash deploy/scripts/install_all.sh)",
            pytrace=False,
        )
    return binary


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def _render(helm: Path, *args: str) -> list[dict[str, Any]]:
    done = _helm(helm, "template", "rel", str(CHART), "--namespace", "qc", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {err.path}")


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", [None, GPU_STRIMZI, EXTERNAL], ids=["default", "gpu", "ext"])
def test_helm_lint(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = _helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_default_render_is_valid_and_wired(helm, tmp_path, monkeypatch):
    docs = _render(helm)
    _validate(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 3  # worker, triton, bundled redis
    assert "KafkaTopic" not in kinds and "ServiceMonitor" not in kinds
    assert "HorizontalPodAutoscaler" not in kinds and "NetworkPolicy" not in kinds

    deployments = _by_kind(docs, "Deployment")
    worker = deployments["rel-adqc-worker"]
    assert worker["spec"]["replicas"] == 2
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    serve = _container(worker, "serve")
    assert serve["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert serve["readinessProbe"]["httpGet"]["path"] == "/metrics"
    env = _env(serve)
    assert env["ADQC_STORE__URL"] == "redis://rel-adqc-redis:6379/0"

    triton = _container(deployments["rel-adqc-triton"], "tritonserver")
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    init = deployments["rel-adqc-triton"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:4] == ["export", "triton", "--out", "/models"]
    assert init["args"][init["args"].index("--kind") + 1] == "cpu"
    assert _env(triton)["ADQC_REDIS_URL"] == "redis://rel-adqc-redis:6379/0"

    # The ConfigMap's serve.yaml + the Deployment's env must load with the real settings loader.
    from ingest.settings import load_settings

    config = _by_kind(docs, "ConfigMap")["rel-adqc-worker"]["data"]["serve.yaml"]
    (tmp_path / "serve.yaml").write_text(config)
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = load_settings(tmp_path / "serve.yaml")
    assert settings.engine.kind == "triton"
    assert settings.engine.url == "rel-adqc-triton:8001"
    assert settings.kafka.bootstrap == ["my-cluster-kafka-bootstrap.kafka.svc:9092"]
    assert settings.store.url == "redis://rel-adqc-redis:6379/0"
    assert settings.topics.dlq == "frames.dlq"
    assert settings.telemetry.prometheus_port == 9464


def test_gpu_strimzi_render(helm):
    docs = _render(helm, "-f", str(GPU_STRIMZI))
    _validate(docs)
    deployments = _by_kind(docs, "Deployment")
    triton_pod = deployments["rel-adqc-triton"]["spec"]["template"]["spec"]
    triton = _container(deployments["rel-adqc-triton"], "tritonserver")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--allow-gpu-metrics=true" in triton["args"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in triton_pod[
        "tolerations"
    ]
    init_args = triton_pod["initContainers"][0]["args"]
    assert init_args[init_args.index("--kind") + 1] == "gpu"
    assert init_args[init_args.index("--instances") + 1] == "2"

    worker = deployments["rel-adqc-worker"]
    assert "replicas" not in worker["spec"]  # the HPA owns the replica count
    hpa = _by_kind(docs, "HorizontalPodAutoscaler")["rel-adqc-worker"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 24)
    env = _env(_container(worker, "serve"))
    assert env["ADQC_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["ADQC_KAFKA__SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "adqc-kafka-user", "key": "password"}
    }
    assert env["ADQC_KAFKA__SSL_CAFILE"] == "/etc/adqc/kafka-ca/ca.crt"

    topics = {t["spec"]["topicName"]: t for t in _by_kind(docs, "KafkaTopic").values()}
    assert set(topics) == {"frames", "frames.dlq", "results", "alarms"}
    for name, topic in topics.items():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["namespace"] == "kafka"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "plant"
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["partitions"] == (3 if name == "frames.dlq" else 24)
        assert all(isinstance(v, str) for v in topic["spec"]["config"].values())
    assert topics["frames.dlq"]["spec"]["config"]["retention.ms"] == "2592000000"
    assert topics["frames"]["spec"]["config"]["retention.ms"] == "604800000"

    (monitor,) = _by_kind(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    services = _by_kind(docs, "Service")
    for service in ("rel-adqc-worker", "rel-adqc-triton"):
        assert "metrics" in {p["name"] for p in services[service]["spec"]["ports"]}
    assert set(_by_kind(docs, "NetworkPolicy")) == {
        "rel-adqc-worker",
        "rel-adqc-triton",
        "rel-adqc-redis",
    }


def test_external_redis_and_model_pvc_render(helm):
    docs = _render(helm, "-f", str(EXTERNAL))
    _validate(docs)
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == {"rel-adqc-worker", "rel-adqc-triton"}  # no bundled Redis
    secret_ref = {"secretKeyRef": {"name": "adqc-redis", "key": "url"}}
    assert (
        _env(_container(deployments["rel-adqc-worker"], "serve"))["ADQC_STORE__URL"] == secret_ref
    )
    triton_pod = deployments["rel-adqc-triton"]["spec"]["template"]["spec"]
    assert "initContainers" not in triton_pod
    (models,) = [v for v in triton_pod["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"]["claimName"] == "adqc-models"
    triton = _container(deployments["rel-adqc-triton"], "tritonserver")
    assert "--model-control-mode=explicit" in triton["args"]
    assert _env(triton)["ADQC_REDIS_URL"] == secret_ref


def test_local_engine_when_triton_disabled(helm):
    docs = _render(helm, "--set", "triton.enabled=false")
    _validate(docs)
    assert "rel-adqc-triton" not in _by_kind(docs, "Deployment")
    config = yaml.safe_load(_by_kind(docs, "ConfigMap")["rel-adqc-worker"]["data"]["serve.yaml"])
    assert config["engine"] == {"kind": "local", "backbone": "mobilenet_v2", "device": "cpu"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "kafka.bootstrapServers=no-port"], "bootstrapServers"),
        (["--set", "kafka.topics.frames=bad topic"], "/kafka/topics/frames"),
        (["--set", "worker.replicas=-1"], "/worker/replicas"),
        (["--set", "triton.modelRepository.source=s3"], "/triton/modelRepository/source"),
        (["--set", "redis.enabled=false"], "set redis.externalUrl"),
        (["--set", "triton.modelRepository.source=pvc"], "existingClaim is required"),
        (["--set", "kafka.securityProtocol=SASL_SSL"], "kafka.sasl.mechanism is required"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(helm, args, message):
    done = _helm(helm, "template", "rel", str(CHART), *args)
    assert done.returncode != 0
    assert message in done.stderr
