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

import base64
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_testkit import (
    CHART,
    CI_VALUES,
    CPU_ONLY,
    CUSTOM_KINDS,
    DURABLE,
    EXTERNAL,
    GPU_STRIMZI,
    K8S_VERSION,
    KEDA,
    MTLS,
)


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
            CUSTOM_CHECKS[doc["kind"]](doc)
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


def _resolved_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secretKeyRef values from the
    rendered Secrets (others left out), ``$(VAR)`` of earlier variables expanded."""
    secrets = _by_kind(docs, "Secret")
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"]
            )
            continue
        ref = entry["valueFrom"].get("secretKeyRef")
        if ref and ref["name"] in secrets:
            data = secrets[ref["name"]]["data"]
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def _mounted_secret(deployment: dict[str, Any], container: str, path: str) -> tuple[str, str]:
    """(Secret name, key) of the single-key Secret volume the container mounts read-only at
    ``path`` (mode 0440)."""
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [
        m for m in _container(deployment, container)["volumeMounts"] if m["mountPath"] == path
    ]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["defaultMode"] == 0o440
    (item,) = secret["items"]
    assert item["path"] == item["key"]
    return secret["secretName"], item["key"]


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs of every workload: Deployments (template) and bare Pods (helm test)."""
    pods = {
        f"Deployment/{name}": d["spec"]["template"]["spec"]
        for name, d in _by_kind(docs, "Deployment").items()
    }
    pods.update({f"Pod/{name}": d["spec"] for name, d in _by_kind(docs, "Pod").items()})
    return pods


# --- custom resources: structural checks ------------------------------------------------------

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _check_kafkatopic(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert doc["metadata"]["labels"]["strimzi.io/cluster"]
    spec = doc["spec"]
    assert isinstance(spec["topicName"], str) and spec["topicName"]
    assert isinstance(spec["partitions"], int) and isinstance(spec["replicas"], int)
    assert all(isinstance(v, str) for v in spec.get("config", {}).values())


def _check_servicemonitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        assert isinstance(endpoint["port"], str) and DURATION.match(endpoint["interval"])


def _check_prometheusrule(doc: dict[str, Any]) -> None:
    import promql_parser

    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    for group in doc["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            promql_parser.parse(rule["expr"])  # raises on a syntax error
            assert DURATION.match(rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert all(isinstance(v, str) for v in rule["annotations"].values())


def _check_scaledobject(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    spec = doc["spec"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment" and spec["scaleTargetRef"]["name"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["fallback"]["replicas"] >= 1
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        # KEDA's trigger metadata is map[string]string: a number here is rejected by the API
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
        for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
            assert trigger["metadata"][key]


def _check_triggerauthentication(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    spec = doc["spec"]
    assert set(spec) <= {"secretTargetRef", "env"} and spec
    for ref in spec.get("secretTargetRef", []):
        assert set(ref) == {"parameter", "name", "key"} and all(ref.values())
    for ref in spec.get("env", []):
        assert set(ref) == {"parameter", "name", "containerName"} and all(ref.values())


CUSTOM_CHECKS = {
    "KafkaTopic": _check_kafkatopic,
    "ServiceMonitor": _check_servicemonitor,
    "PrometheusRule": _check_prometheusrule,
    "ScaledObject": _check_scaledobject,
    "TriggerAuthentication": _check_triggerauthentication,
}


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_helm_lint_render_and_validate(helm, values):
    """Every CI value set: lint --strict, render, validate, and the chart-wide invariants."""
    extra = ["-f", str(values)] if values else []
    done = _helm(helm, "lint", "--strict", str(CHART), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    docs = _render(helm, *extra)
    _validate(docs)
    pods = _pods(docs)
    assert pods
    for where, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container["securityContext"]
            name = f"{where}/{container['name']}"
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "resources" in container, name
    # No password in any ConfigMap.
    for cm in _by_kind(docs, "ConfigMap").values():
        text = yaml.safe_dump(cm["data"])
        if "serve.yaml" in cm["data"]:
            assert "password" not in yaml.safe_dump(yaml.safe_load(cm["data"]["serve.yaml"]))
        for secret in _by_kind(docs, "Secret").values():
            for value in secret.get("data", {}).values():
                assert base64.b64decode(value).decode() not in text
    # Autoscalers never fight: at most one of HPA / ScaledObject, and then no fixed replicas.
    kinds = [d["kind"] for d in docs]
    scalers = kinds.count("HorizontalPodAutoscaler") + kinds.count("ScaledObject")
    assert scalers <= 1
    worker = _by_kind(docs, "Deployment")["rel-adqc-worker"]
    assert ("replicas" in worker["spec"]) == (scalers == 0)


def test_default_render_is_valid_and_wired(helm, tmp_path, monkeypatch):
    docs = _render(helm)
    _validate(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 3  # worker, triton, bundled redis
    assert "KafkaTopic" not in kinds and "ServiceMonitor" not in kinds
    assert "HorizontalPodAutoscaler" not in kinds and "NetworkPolicy" not in kinds
    assert "ScaledObject" not in kinds and "PrometheusRule" not in kinds
    assert set(_by_kind(docs, "PodDisruptionBudget")) == {"rel-adqc-worker", "rel-adqc-triton"}
    for pdb in _by_kind(docs, "PodDisruptionBudget").values():
        assert pdb["spec"]["maxUnavailable"] == 1
        component = pdb["metadata"]["name"].rsplit("-", 1)[1]
        labels = _by_kind(docs, "Deployment")[pdb["metadata"]["name"]]["spec"]["template"]
        assert pdb["spec"]["selector"]["matchLabels"] == labels["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component

    deployments = _by_kind(docs, "Deployment")
    worker = deployments["rel-adqc-worker"]
    assert worker["spec"]["replicas"] == 2
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9464"
    serve = _container(worker, "serve")
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert serve["readinessProbe"]["httpGet"]["path"] == "/metrics"
    # The Redis password: a file from the Secret, not in the environment nor in the URL.
    assert _env(serve)["ADQC_STORE__URL"] == "redis://rel-adqc-redis:6379/0"
    assert _env(serve)["ADQC_REDIS_PASSWORD_FILE"] == "/etc/adqc/redis-auth/password"
    assert "ADQC_REDIS_PASSWORD" not in _env(serve)
    assert _mounted_secret(worker, "serve", "/etc/adqc/redis-auth") == (
        "rel-adqc-redis",
        "password",
    )
    env = _resolved_env(serve, docs)
    password = base64.b64decode(_by_kind(docs, "Secret")["rel-adqc-redis"]["data"]["password"])
    password = password.decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)

    triton = _container(deployments["rel-adqc-triton"], "tritonserver")
    assert "nvidia.com/gpu" not in triton["resources"].get("limits", {})
    init = deployments["rel-adqc-triton"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:4] == ["export", "triton", "--out", "/models"]
    assert init["args"][init["args"].index("--kind") + 1] == "cpu"
    assert _resolved_env(triton, docs)["ADQC_STORE__URL"] == env["ADQC_STORE__URL"]
    assert _env(triton)["ADQC_REDIS_PASSWORD_FILE"] == "/etc/adqc/redis-auth/password"
    triton_deployment = deployments["rel-adqc-triton"]
    secret_file = ("rel-adqc-redis", "password")
    assert _mounted_secret(triton_deployment, "tritonserver", "/etc/adqc/redis-auth") == secret_file

    # The ConfigMap's serve.yaml + the Deployment's env must load with the real settings loader,
    # and the store it opens authenticates with the password from the mounted file.
    from inference.store import open_store
    from ingest.settings import load_settings

    config = _by_kind(docs, "ConfigMap")["rel-adqc-worker"]["data"]["serve.yaml"]
    (tmp_path / "serve.yaml").write_text(config)
    (tmp_path / "password").write_text(password)
    for name, value in env.items():
        if name.startswith("ADQC_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("ADQC_REDIS_PASSWORD_FILE", str(tmp_path / "password"))
    monkeypatch.delenv("ADQC_REDIS_PASSWORD", raising=False)
    settings = load_settings(tmp_path / "serve.yaml")
    assert settings.engine.kind == "triton"
    assert settings.engine.url == "rel-adqc-triton:8001"
    assert settings.kafka.bootstrap == ["my-cluster-kafka-bootstrap.kafka.svc:9092"]
    assert settings.store.url == "redis://rel-adqc-redis:6379/0"
    with open_store(settings.store.url) as store:
        assert store._client.connection_pool.connection_kwargs["password"] == password
        assert password not in store.url
    assert settings.topics.dlq == "frames.dlq"
    assert settings.telemetry.prometheus_port == 9464
    assert settings.telemetry.stall_after_s == 90

    # The bundled Redis: password from the generated Secret, off the command line.
    (secret,) = _by_kind(docs, "Secret").values()
    assert secret["metadata"]["name"] == "rel-adqc-redis"
    redis = _container(deployments["rel-adqc-redis"], "redis")
    assert password not in yaml.safe_dump(redis)
    assert "requirepass" in redis["command"][2] and "$REDIS_PASSWORD" in redis["command"][2]
    redis_env = _env(redis)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert redis_env[name] == {"secretKeyRef": {"name": "rel-adqc-redis", "key": "password"}}
    # A fresh render (no live Secret to look up) generates a new password.
    again = _by_kind(_render(helm), "Secret")["rel-adqc-redis"]["data"]["password"]
    assert again != secret["data"]["password"]

    # helm test: one frame in, its outcome out.
    (test_pod,) = _by_kind(docs, "Pod").values()
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    smoke = _container({"spec": {"template": {"spec": test_pod["spec"]}}}, "smoke")
    assert smoke["command"] == ["python", "-m", "ingest.smoke"]
    assert smoke["args"] == ["--timeout", "120"]  # no product: expect the DLQ record
    assert _env(smoke)["ADQC_KAFKA__BOOTSTRAP"] == env["ADQC_KAFKA__BOOTSTRAP"]
    assert _env(smoke)["ADQC_TOPICS__RESULTS"] == "results"
    assert test_pod["spec"]["restartPolicy"] == "Never"


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


def test_cpu_only_render(helm):
    docs = _render(helm, "-f", str(CPU_ONLY))
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == {"rel-adqc-worker", "rel-adqc-redis"}
    assert set(_by_kind(docs, "PodDisruptionBudget")) == {"rel-adqc-worker"}
    assert "Secret" not in {d["kind"] for d in docs}  # existingSecret: nothing generated
    serve = _container(deployments["rel-adqc-worker"], "serve")
    assert _env(serve)["ADQC_REDIS_PASSWORD_FILE"] == "/etc/adqc/redis-auth/redis-password"
    assert _mounted_secret(deployments["rel-adqc-worker"], "serve", "/etc/adqc/redis-auth") == (
        "plant-redis-auth",
        "redis-password",
    )
    assert serve["resources"]["limits"]["memory"] == "3.5Gi"
    config = yaml.safe_load(_by_kind(docs, "ConfigMap")["rel-adqc-worker"]["data"]["serve.yaml"])
    assert config["engine"]["kind"] == "local" and config["engine"]["torch_threads"] == 2
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in docs}


def test_keda_scales_on_lag_with_the_workers_credentials(helm):
    docs = _render(helm, "-f", str(KEDA))
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}
    (scaled,) = _by_kind(docs, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "rel-adqc-worker"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 24)
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert meta["topic"] == "plant.frames" and meta["consumerGroup"] == "plant-qc"
    assert meta["bootstrapServers"] == "plant-kafka-bootstrap.kafka.svc:9093"
    # KEDA's names for the SASL mechanisms (plaintext, scram_sha256, scram_sha512)
    assert (meta["lagThreshold"], meta["sasl"], meta["tls"]) == ("300", "scram_sha512", "enable")
    assert trigger["authenticationRef"]["name"] == "rel-adqc-worker"
    (auth,) = _by_kind(docs, "TriggerAuthentication").values()
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "password": ("adqc-kafka-user", "password"),
        "ca": ("plant-cluster-ca-cert", "ca.crt"),
    }
    (username,) = auth["spec"]["env"]
    serve = _container(_by_kind(docs, "Deployment")["rel-adqc-worker"], "serve")
    assert username["containerName"] == serve["name"]
    assert _env(serve)[username["name"]] == "adqc"
    assert _by_kind(docs, "PodDisruptionBudget")["rel-adqc-worker"]["spec"] == {
        "maxUnavailable": "25%",
        "selector": {
            "matchLabels": _by_kind(docs, "Deployment")["rel-adqc-worker"]["spec"]["selector"][
                "matchLabels"
            ]
        },
    }


@pytest.mark.parametrize(
    ("mechanism", "keda"),
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512")],
)
def test_keda_sasl_mode_names(helm, mechanism, keda):
    docs = _render(helm, "-f", str(KEDA), "--set", f"kafka.sasl.mechanism={mechanism}")
    (scaled,) = _by_kind(docs, "ScaledObject").values()
    assert scaled["spec"]["triggers"][0]["metadata"]["sasl"] == keda


def test_mtls_client_certificate_is_mounted_and_wired(helm, tmp_path, monkeypatch):
    docs = _render(helm, "-f", str(MTLS))
    worker = _by_kind(docs, "Deployment")["rel-adqc-worker"]
    pod = worker["spec"]["template"]["spec"]
    serve = _container(worker, "serve")
    env = _env(serve)
    assert env["ADQC_KAFKA__SECURITY_PROTOCOL"] == "SSL"
    assert env["ADQC_KAFKA__SSL_CAFILE"] == "/etc/adqc/kafka-ca/ca.crt"
    assert env["ADQC_KAFKA__SSL_CERTFILE"] == "/etc/adqc/kafka-client/user.crt"
    assert env["ADQC_KAFKA__SSL_KEYFILE"] == "/etc/adqc/kafka-client/user.key"
    mounts = {m["name"]: m for m in serve["volumeMounts"]}
    assert mounts["kafka-client"] == {
        "name": "kafka-client",
        "mountPath": "/etc/adqc/kafka-client",
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-client"]
    assert volume["secret"]["secretName"] == "adqc-kafka-user"
    assert {i["key"] for i in volume["secret"]["items"]} == {"user.crt", "user.key"}
    # The same wiring in the helm-test pod, and the KEDA scaler authenticates with the cert.
    (test_pod,) = _by_kind(docs, "Pod").values()
    smoke = test_pod["spec"]["containers"][0]
    assert _env(smoke)["ADQC_KAFKA__SSL_KEYFILE"] == env["ADQC_KAFKA__SSL_KEYFILE"]
    (auth,) = _by_kind(docs, "TriggerAuthentication").values()
    params = {r["parameter"]: r["key"] for r in auth["spec"]["secretTargetRef"]}
    assert params == {"ca": "ca.crt", "cert": "user.crt", "key": "user.key"}
    # The settings loader turns the env into kafka-python's client-certificate arguments.
    from ingest.settings import load_settings

    for name, value in env.items():
        if isinstance(value, str) and name.startswith("ADQC_KAFKA__"):
            if value.startswith("/etc/adqc/"):
                local = tmp_path / Path(value).name
                local.write_text("PEM")
                value = str(local)
            monkeypatch.setenv(name, value)
    client = load_settings().kafka.client_config()
    assert client["security_protocol"] == "SSL"
    assert client["ssl_certfile"].endswith("user.crt")
    assert client["ssl_keyfile"].endswith("user.key")
    assert client["ssl_cafile"].endswith("ca.crt")


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
    assert _env(triton)["ADQC_STORE__URL"] == secret_ref


def test_durable_reference_store_is_mounted_from_a_pvc(helm, tmp_path, monkeypatch):
    """store.durable: a PVC (kept on uninstall) mounted read-write by workers and Triton, the
    store URL with ?durable=file://<mountPath>; the settings loader and open_store make it a
    tiered store over that directory."""
    docs = _render(helm, "-f", str(DURABLE))
    _validate(docs)
    claims = _by_kind(docs, "PersistentVolumeClaim")
    claim = claims["rel-adqc-references"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    url = "redis://rel-adqc-redis:6379/0?durable=file:///var/lib/adqc/references"
    deployments = _by_kind(docs, "Deployment")
    for name, container in (("rel-adqc-worker", "serve"), ("rel-adqc-triton", "tritonserver")):
        deployment = deployments[name]
        env = _env(_container(deployment, container))
        assert env["ADQC_STORE__URL"] == url, name
        assert env["ADQC_REDIS_PASSWORD_FILE"] == "/etc/adqc/redis-auth/password", name
        mounts = {m["name"]: m for m in _container(deployment, container)["volumeMounts"]}
        assert mounts["references"]["mountPath"] == "/var/lib/adqc/references", name
        assert not mounts["references"].get("readOnly"), name  # `adqc product` writes it
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["references"]["persistentVolumeClaim"] == {
            "claimName": "rel-adqc-references"
        }
    assert "references" not in {
        v["name"] for v in deployments["rel-adqc-redis"]["spec"]["template"]["spec"]["volumes"]
    }

    # The worker's environment opens a TieredStore over the mounted directory (here a local one).
    from inference.store import open_store
    from inference.store.tiered import TieredStore
    from ingest.settings import load_settings

    local = f"file://{tmp_path / 'references'}"
    monkeypatch.setenv("ADQC_STORE__URL", url.replace("file:///var/lib/adqc/references", local))
    (tmp_path / "password").write_text("pw")
    monkeypatch.setenv("ADQC_REDIS_PASSWORD_FILE", str(tmp_path / "password"))
    with open_store(load_settings().store.url) as store:
        assert isinstance(store, TieredStore)
        assert store.durable.root == tmp_path / "references"

    # An existing claim is mounted as is (no PVC rendered); an external URL gets the query too.
    docs = _render(
        helm,
        "--set",
        "store.durable.enabled=true",
        "--set",
        "store.durable.existingClaim=plant-references",
        "--set",
        "redis.enabled=false",
        "--set",
        "redis.externalUrl=rediss://redis.plant:6380/2?ssl_ca_certs=/etc/ca.pem",
    )
    assert "rel-adqc-references" not in _by_kind(docs, "PersistentVolumeClaim")
    worker = _by_kind(docs, "Deployment")["rel-adqc-worker"]
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["references"]["persistentVolumeClaim"]["claimName"] == "plant-references"
    assert "redis-auth" not in volumes  # no bundled Redis: no password file
    assert _env(_container(worker, "serve"))["ADQC_STORE__URL"] == (
        "rediss://redis.plant:6380/2?ssl_ca_certs=/etc/ca.pem"
        "&durable=file:///var/lib/adqc/references"
    )


def test_redis_password_in_the_environment_when_asked(helm):
    """redis.auth.passwordFile=false: the former wiring, ADQC_REDIS_PASSWORD from the Secret
    expanded into the URL by the kubelet; no password volume."""
    docs = _render(helm, "--set", "redis.auth.passwordFile=false")
    worker = _by_kind(docs, "Deployment")["rel-adqc-worker"]
    serve = _container(worker, "serve")
    assert _env(serve)["ADQC_STORE__URL"] == "redis://:$(ADQC_REDIS_PASSWORD)@rel-adqc-redis:6379/0"
    assert _env(serve)["ADQC_REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "rel-adqc-redis", "key": "password"}
    }
    assert "ADQC_REDIS_PASSWORD_FILE" not in _env(serve)
    assert "redis-auth" not in {v["name"] for v in worker["spec"]["template"]["spec"]["volumes"]}
    password = _resolved_env(serve, docs)["ADQC_REDIS_PASSWORD"]
    assert _resolved_env(serve, docs)["ADQC_STORE__URL"] == (
        f"redis://:{password}@rel-adqc-redis:6379/0"
    )


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
        (["--set", "worker.resources.requests.cpu=lots"], "/worker/resources/requests/cpu"),
        (["--set", "triton.resources.limits.memory=8GB"], "/triton/resources/limits/memory"),
        (["--set", "redis.persistence.size=big"], "/redis/persistence/size"),
        (["--set", "worker.resources.requests.cpus=1"], "cpus"),
        (["--set", "worker.keda.lagThreshold=0"], "/worker/keda/lagThreshold"),
        (["--set", "monitoring.prometheusRule.consumerLag.for=ten"], "consumerLag/for"),
        (
            ["--set", "worker.autoscaling.enabled=true", "--set", "worker.keda.enabled=true"],
            "mutually exclusive",
        ),
        (["--set", "kafka.clientCertSecret.name=u"], "needs kafka.securityProtocol SSL"),
        (["--set", "store.durable.size=big"], "/store/durable/size"),
        (["--set", "store.durable.accessModes={ReadOnlyMany}"], "/store/durable/accessModes"),
        (["--set", "store.durable.mountPath=refs"], "/store/durable/mountPath"),
        (["--set", "store.durable.mountPath=/tmp"], "/store/durable/mountPath"),
        (["--set", "store.durable.existingClaim=Bad_Claim"], "/store/durable/existingClaim"),
        (["--set", "store.durable.enable=true"], "enable"),
        (["--set", "store.cache=true"], "cache"),
        (["--set", "redis.auth.passwordFile=yes"], "/redis/auth/passwordFile"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(helm, args, message):
    done = _helm(helm, "template", "rel", str(CHART), *args)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.integration
def test_rendered_redis_requires_the_generated_password(helm, tmp_path):
    """Run the chart's Redis command (real redis-server) and connect as the worker would."""
    import redis as redis_client

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed: `make servers` installs it")
    docs = _render(helm)
    container = _container(_by_kind(docs, "Deployment")["rel-adqc-redis"], "redis")
    env = _resolved_env(container, docs)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        c.replace("/tmp/auth.conf", str(tmp_path / "auth.conf")) for c in container["command"]
    ]
    args = [str(tmp_path) if a == "/data" else a for a in container["args"]]
    args += ["--port", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_file(tmp_path / "auth.conf")
        worker_env = _resolved_env(
            _container(_by_kind(docs, "Deployment")["rel-adqc-worker"], "serve"), docs
        )
        from inference.store.urls import with_secret_password

        # the worker's URL has no password: the process adds it from the mounted Secret file
        assert "ADQC_REDIS_PASSWORD_FILE" in worker_env
        (tmp_path / "password").write_text(env["REDIS_PASSWORD"])
        url = worker_env["ADQC_STORE__URL"].replace("rel-adqc-redis:6379", f"127.0.0.1:{port}")
        url = with_secret_password(url, {"ADQC_REDIS_PASSWORD_FILE": str(tmp_path / "password")})
        deadline = time.monotonic() + 20
        while True:
            try:
                assert redis_client.Redis.from_url(url).ping() is True
                break
            except redis_client.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        anonymous = redis_client.Redis(host="127.0.0.1", port=port)
        with pytest.raises(redis_client.AuthenticationError):
            anonymous.set("k", "v")
        # The probes: `redis-cli ping` with REDISCLI_AUTH from the Secret.
        cli, *rest = container["readinessProbe"]["exec"]["command"]
        probe = subprocess.run(
            [cli, "-p", str(port), *rest],
            env={**os.environ, "REDISCLI_AUTH": env["REDISCLI_AUTH"]},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert probe.stdout.strip() == "PONG"
        # The password is not on the server's command line.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert env["REDIS_PASSWORD"] not in cmdline
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_file(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
