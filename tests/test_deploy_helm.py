"""The Helm chart: lint, render with default and non-default values, every manifest strictly
valid for current Kubernetes, values outside the schema refused, and the parts that must agree
(selectors, ports, probes, drain timing, metric names, settings) agreeing."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.config import ServeConfig
from scheduler.metrics import Metrics
from tests.deploy_tools import (
    BIN,
    CHART,
    KUBERNETES_VERSION,
    OLDEST_KUBERNETES,
    ROOT,
    by_kind,
    helm,
    kubernetes_validate,
    render,
)

FULL = CHART / "ci" / "full-values.yaml"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject"}  # no schema in kubernetes-validate
VARIANTS = {"default": (), "full": ("-f", str(FULL)),
            "adapter-inflight-cpu": ("--set", "autoscaling.enabled=true", "--set",
                                     "autoscaling.metric=inFlight", "--set", "gpusPerPod=0",
                                     "--set", "modelVolume.type=none", "--set",
                                     "networkPolicy.enabled=false")}


def serve_settings() -> set[str]:
    fields = getattr(ServeConfig, "model_fields", None)  # pydantic-settings, or a dataclass
    return set(fields) if fields else {f.name for f in dataclasses.fields(ServeConfig)}


def deployment(docs: list[dict[str, Any]], name: str = "rel-asr-scheduler") -> dict[str, Any]:
    return next(d for d in by_kind(docs)["Deployment"] if d["metadata"]["name"] == name)


def container(docs: list[dict[str, Any]], name: str = "rel-asr-scheduler") -> dict[str, Any]:
    return deployment(docs, name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_and_strict_validation(variant: str, tmp_path: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), *VARIANTS[variant])
    assert "0 chart(s) failed" in lint.stdout
    docs = render(*VARIANTS[variant])
    paths = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(path)
    for version in (KUBERNETES_VERSION, OLDEST_KUBERNETES):
        out = kubernetes_validate(paths, version)
        assert out.returncode == 0, out.stdout + out.stderr
        warnings = [line for line in (out.stdout + out.stderr).splitlines()
                    if line.startswith(("WARN", "ERROR"))]
        for line in warnings:  # only custom resources lack a schema; those are checked below
            assert "Couldn't find schema for kind" in line, line
            assert line.split("kind ")[1].split()[0] in CRD_KINDS, line
        assert sum(1 for d in docs if d["kind"] in CRD_KINDS) == len(warnings)


def test_default_render() -> None:
    docs = render()
    kinds = by_kind(docs)
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "Deployment",
                          "PodDisruptionBudget", "NetworkPolicy"}
    deploy = deployment(docs)
    pod = deploy["spec"]["template"]["spec"]
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": 50051, "service": "asr.v1.Recognizer"}
    assert c["livenessProbe"]["grpc"]["port"] == 50051
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "slow model loads"
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    env = {e["name"]: e.get("value") for e in c["env"]}
    grace = float(env["ASR_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 5, "the drain fits the grace"
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and {"/cache", "/tmp", "/home/asr"} <= set(mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "asr-models"
    config = yaml.safe_load(kinds["ConfigMap"][0]["data"]["config.yaml"])
    assert config["model"] == "/models/SenseVoiceSmall" and config["devices"] == "auto"
    assert env["ASR_CONFIG"] == mounts["/etc/asr-scheduler/config.yaml"]["mountPath"]


def test_selectors_ports_and_names_agree() -> None:
    for variant in VARIANTS.values():
        docs = render(*variant)
        kinds = by_kind(docs)
        pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
        c = container(docs)
        container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert set(container_ports) == {"grpc", "metrics"}
        services = {s["metadata"]["name"]: s for s in kinds["Service"]
                    if not s["metadata"]["name"].endswith("-envoy")}
        headless = services["rel-asr-scheduler-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        for svc in services.values():
            assert svc["spec"]["selector"].items() <= pod_labels.items()
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in container_ports
        for kind in ("PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PodMonitor"):
            for doc in kinds.get(kind, []):
                selector = doc["spec"].get("selector") or doc["spec"]["podSelector"]
                assert selector["matchLabels"].items() <= pod_labels.items(), kind
        for sm in kinds.get("ServiceMonitor", []):
            main = services["rel-asr-scheduler"]
            assert {e["port"] for e in sm["spec"]["endpoints"]} <= \
                {p["name"] for p in main["spec"]["ports"]}
        for pm in kinds.get("PodMonitor", []):
            assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= set(container_ports)
        for np in kinds.get("NetworkPolicy", []):
            assert {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]} == \
                set(container_ports)
        for scaler in (*kinds.get("HorizontalPodAutoscaler", []), *kinds.get("ScaledObject", [])):
            assert scaler["spec"]["scaleTargetRef"]["name"] == "rel-asr-scheduler"
        volumes = {v["name"] for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes


def test_settings_are_serve_settings() -> None:
    """Every key of the config file and every ASR_ variable is a `serve` setting."""
    known = serve_settings()
    for variant in VARIANTS.values():
        docs = render(*variant)
        config = yaml.safe_load(by_kind(docs)["ConfigMap"][0]["data"]["config.yaml"])
        assert set(config) <= known, set(config) - known
        names = {e["name"] for e in container(docs)["env"] if e["name"].startswith("ASR_")}
        names -= {"ASR_CONFIG", "ASR_PROBE_CA", "ASR_PROBE_SERVER_NAME"}  # file / probe script
        assert {n.removeprefix("ASR_").lower() for n in names} <= known


def test_full_values_render() -> None:
    docs = render("-f", str(FULL))
    kinds = by_kind(docs)
    c = container(docs)
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert c["image"] == "registry.example.com/speech/asr-scheduler:0.1.0-cuda13"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "replicas" not in deployment(docs)["spec"], "the autoscaler owns replicas"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # TLS: no native gRPC
        assert c[probe]["exec"]["command"] == ["python3", "/opt/asr/healthcheck.py"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ASR_TLS_CLIENT_CA"] == "/etc/asr-scheduler/tls/ca.crt"
    assert env["ASR_AUTH_TOKEN_FILE"] == "/etc/asr-scheduler/auth/token"
    assert env["ASR_ADMIN_TOKEN_FILE"] == "/etc/asr-scheduler/admin-auth/token"
    assert pod["terminationGracePeriodSeconds"] >= 10 + 300
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == "/srv/asr-models"
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "asr-cache"
    assert volumes["tls"]["secret"]["secretName"] == "asr-tls"
    config = yaml.safe_load(kinds["ConfigMap"][0]["data"]["config.yaml"])
    assert config["model"] == ["sensevoice=/models/SenseVoiceSmall",
                               "paraformer=/models/paraformer-zh"]
    assert (config["max_batch_size"], config["cpu_fallback"], config["dtype"]) == \
        (64, "never", "bf16")
    scaled = kinds["ScaledObject"][0]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "asr_queue_wait_seconds_sum" in \
        trigger["metadata"]["query"] and trigger["metadata"]["threshold"] == "1.5"
    assert scaled["spec"]["maxReplicaCount"] == 12
    assert kinds["ServiceMonitor"][0]["metadata"]["labels"]["release"] == \
        "kube-prometheus-stack"


def test_cpu_only_pod_requests_no_gpu() -> None:
    docs = render(*VARIANTS["adapter-inflight-cpu"])
    c = container(docs)
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "nodeSelector" not in pod and "tolerations" not in pod
    config = yaml.safe_load(by_kind(docs)["ConfigMap"][0]["data"]["config.yaml"])
    assert config["devices"] == "cpu"
    assert "models" not in {m["name"] for m in c["volumeMounts"]}


def test_autoscaler_metrics_come_from_the_adapter_rules_and_the_service() -> None:
    adapter = yaml.safe_load((ROOT / "deploy" / "helm" /
                              "prometheus-adapter-values.yaml").read_text())
    rules = {r["name"]["as"]: r for r in adapter["rules"]["custom"]}
    exported = set()
    for family in Metrics().registry.collect():  # sample names, also of unlabelled families
        suffixes = {"histogram": ("_sum", "_count", "_bucket"), "counter": ("_total",)}
        exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    for rule in rules.values():
        series = rule["seriesQuery"].split("{")[0]
        assert series in exported, series
        for word in rule["metricsQuery"].replace("(", " ").split():
            if word.startswith("asr_"):
                assert word.split("{")[0] in exported, word
    for metric in ("queueWait", "inFlight"):
        docs = render("--set", "autoscaling.enabled=true", "--set",
                      f"autoscaling.metric={metric}")
        hpa = by_kind(docs)["HorizontalPodAutoscaler"][0]
        name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert name in rules, name


@pytest.mark.parametrize("bad", [
    "gpusPerPod=-1", "fallback.cpuFallback=sometimes", "unknownKey=1",
    "batching.maxBatchSize=0", "devices=gpu0", "drain.graceSeconds=0",
    "fallback.memoryFloorFraction=1.5", "autoscaling.mode=hpa", "models=null",
    "image.pullPolicy=Sometimes", "batching.extra=1", "config.model=/elsewhere",
    "config.shutdown_grace_s=1",
])
def test_values_outside_the_schema_are_refused(bad: str) -> None:
    out = helm("template", "rel", str(CHART), "--set", bad, check=False)
    assert out.returncode != 0
    assert "schema" in out.stderr.lower(), out.stderr


@pytest.mark.parametrize("bad, message", [
    (("--set", "tls.enabled=true"), "tls.secretName"),
    (("--set", "modelVolume.claimName="), "claimName"),
    (("--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5", "--set",
      "autoscaling.maxReplicas=2"), "maxReplicas"),
])
def test_inconsistent_values_are_refused(bad: tuple[str, ...], message: str) -> None:
    out = helm("template", "rel", str(CHART), *bad, check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_chart_envoy_is_the_shipped_config_pointed_at_the_release(tmp_path: Path) -> None:
    shipped = ROOT / "deploy" / "envoy" / "envoy.yaml"
    assert (CHART / "files" / "envoy.yaml").read_bytes() == shipped.read_bytes(), \
        "copy deploy/envoy/envoy.yaml to the chart's files/"
    docs = render("-f", str(FULL))
    kinds = by_kind(docs)
    text = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("-envoy")
                )["data"]["envoy.yaml"]
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    out = subprocess.run([str(BIN / "envoy"), "--mode", "validate", "-c", str(path),
                          "--disable-hot-restart"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Deprecated" not in out.stdout + out.stderr, out.stderr
    config = yaml.safe_load(text)
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["port_value"] == 8443
    upstream = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0][
        "lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert upstream == {"address": "rel-asr-scheduler-headless.asr.svc.cluster.local",
                        "port_value": 50051}
    names = {s["metadata"]["name"] for s in kinds["Service"]}
    assert "rel-asr-scheduler-headless" in names
    proxy = deployment(docs, "rel-asr-scheduler-envoy")
    labels = proxy["spec"]["template"]["metadata"]["labels"]
    service = next(s for s in kinds["Service"] if s["metadata"]["name"].endswith("-envoy"))
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8443
    assert not labels.items() >= deployment(docs)["spec"]["selector"]["matchLabels"].items(), \
        "the scheduler's selectors must not pick Envoy pods"
    policy = kinds["NetworkPolicy"][0]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": labels}} in policy, "Envoy may call the pods"
    assert proxy["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesystem"] is True
