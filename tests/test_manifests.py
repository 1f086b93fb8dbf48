"""The Kubernetes manifests build (kubectl kustomize), validate strictly against the
Kubernetes 1.30 schemas (kubernetes-validate, offline), and keep the design's invariants."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OVERLAYS = ["production", "staging"]
# the seed's cost table: gateway 256Mi/50m, HTTP (proxy) and config 128Mi/20m
REQUESTS = {"gateway": ("50m", "256Mi"), "proxy": ("20m", "128Mi"), "config": ("20m", "128Mi")}


def build(overlay: str) -> str:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory):
    text = build(request.param)
    path = tmp_path_factory.mktemp("k8s") / f"{request.param}.yaml"
    path.write_text(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    return request.param, path, {(d["kind"], d["metadata"]["name"]): d for d in docs}


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30", "--quiet", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_document_validates_strictly(rendered):
    _, path, _ = rendered
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_an_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec: {ports: [{port: 80}], sessionAffinityy: None}\n"
    )
    assert validate(bad).returncode != 0


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def test_gateway_is_a_statefulset_behind_a_headless_service(rendered):
    overlay, _, objs = rendered
    sts = objs[("StatefulSet", "gateway")]
    svc = objs[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    assert pod_spec(sts)["terminationGracePeriodSeconds"] >= 30
    assert sts["spec"]["replicas"] == (1 if overlay == "staging" else 3)
    pdb = objs[("PodDisruptionBudget", "gateway")]
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_litestream_restores_when_empty_and_replicates_alongside(rendered):
    _, _, objs = rendered
    spec = pod_spec(objs[("StatefulSet", "gateway")])
    restore = spec["initContainers"][0]["args"]
    assert restore[:2] == ["litestream", "restore"]
    assert "-if-db-not-exists" in restore and "-if-replica-exists" in restore
    sidecar = next(c for c in spec["containers"] if c["name"] == "litestream")
    assert sidecar["args"][:2] == ["litestream", "replicate"]
    config = objs[("ConfigMap", "litestream")]["data"]["litestream.yml"]
    assert "/data/gateway.db" in config and "${POD_NAME}" in config


def test_only_the_proxy_is_exposed_and_scaled_by_cpu(rendered):
    _, _, objs = rendered
    ingresses = [o for (kind, _), o in objs.items() if kind == "Ingress"]
    backends = {
        p["backend"]["service"]["name"]
        for ing in ingresses
        for rule in ing["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert backends == {"proxy"}
    hpa = objs[("HorizontalPodAutoscaler", "proxy")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "proxy",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert not [
        o
        for (kind, _), o in objs.items()
        if kind == "Service" and o["spec"].get("type") in ("LoadBalancer", "NodePort")
    ]


def test_network_policies_fence_the_internal_api_and_the_config_service(rendered):
    _, _, objs = rendered
    policies = {name: o for (kind, name), o in objs.items() if kind == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}

    def sources(name):
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in policies[name]["spec"]["ingress"]
            for peer in rule["from"]
        }

    # the proxy routes to the internal API; the config service drives migrations through it
    assert sources("gateway-internal-api") == {"proxy", "config"}
    assert sources("config-from-pods") <= {"gateway", "proxy", "config"}
    assert sources("postgres-from-config") == {"config"}


def test_secrets_are_referenced_never_inlined(rendered):
    _, _, objs = rendered
    assert not [name for (kind, name) in objs if kind == "Secret"]
    for (kind, _), obj in objs.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(obj)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for env in c.get("env", []):
                secretish = any(
                    w in env["name"] for w in ("TOKEN", "PASSWORD", "SECRET", "KEY", "DATABASE_URL")
                )
                if secretish:
                    assert "secretKeyRef" in env.get("valueFrom", {}), (c["name"], env["name"])


def test_probes_and_requests_match_the_cost_table(rendered):
    overlay, _, objs = rendered
    for (kind, name), obj in objs.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for c in pod_spec(obj)["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, (name, c["name"])
            assert c["resources"]["requests"], (name, c["name"])
        if name in REQUESTS:
            main = next(c for c in pod_spec(obj)["containers"] if c["name"] == name)
            cpu, memory = REQUESTS[name]
            assert main["resources"]["requests"] == {"cpu": cpu, "memory": memory}
    config = objs[("Deployment", "config")]
    assert config["spec"]["replicas"] == (1 if overlay == "staging" else 2)


def test_one_image_for_every_role(rendered):
    _, _, objs = rendered
    images = {
        c["image"]
        for (kind, name), obj in objs.items()
        if kind in ("Deployment", "StatefulSet") and name not in ("postgres", "redis")
        for c in [*pod_spec(obj).get("initContainers", []), *pod_spec(obj)["containers"]]
    }
    assert images == {"ghcr.io/modbot-ring/modbot-ring:0.1.0"}


def test_the_entry_point_picks_the_role(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    entry = str(ROOT / "deploy" / "entrypoint.sh")
    out = subprocess.run(
        ["sh", entry, "config", "--help"], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "MODBOT_DATABASE_URL" in out.stdout
    out = subprocess.run(
        ["sh", entry, "litestream", "version"], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("0.")
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
