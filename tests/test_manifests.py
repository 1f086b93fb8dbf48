"""The Kubernetes manifests build (kubectl kustomize), validate strictly against the
Kubernetes 1.30 schemas (kubernetes-validate, offline), and keep the design's invariants."""

from __future__ import annotations

import os
import re
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
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


def workloads(objs):
    """(kind, name, pod spec) of everything that runs containers, the CronJob included."""
    return [(kind, name, pod_spec(o)) for (kind, name), o in objs.items() if kind in WORKLOADS]


def containers(spec):
    return [*spec.get("initContainers", []), *spec["containers"]]


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
    for _, _, spec in workloads(objs):
        for c in containers(spec):
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
        for _, name, spec in workloads(objs)
        if name not in ("postgres", "redis")
        for c in containers(spec)
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


# -- pinned images and a locked-down securityContext everywhere ------------------------------

SUFFIX = r"(-[A-Za-z0-9._-]+)?"  # e.g. -bookworm, -alpine3.20
# an exact release per image: PostgreSQL's versions have had two parts since 10 (15.10 is a
# patch release); everything else here is major.minor.patch (redis:7.0 floats, 7.0.15 not)
EXACT_TAG = {"postgres": re.compile(r"\d+\.\d+" + SUFFIX)}
SEMVER = re.compile(r"\d+\.\d+\.\d+" + SUFFIX)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def pinned(image: str) -> bool:
    """An exact release tag, or a digest (what real builds should use: manifests/README.md)."""
    ref, _, digest = image.partition("@")
    if digest:
        return bool(DIGEST.fullmatch(digest))
    last = ref.rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    return bool(EXACT_TAG.get(name, SEMVER).fullmatch(tag))


# paths each image must be able to write under a read-only root filesystem
WRITABLE = {
    "proxy": {"/tmp"},  # the Unix socket between the fast path and the aiohttp app
    "config": {"/tmp"},
    "gateway": {"/tmp", "/data"},
    "litestream": {"/data"},
    "restore": {"/data"},
    "backup": {"/tmp"},  # pg_dump's output before upload
    "postgres": {"/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"},
    "redis": {"/data"},
}


def image_problems(objs) -> list[str]:
    problems = []
    for _, name, spec in workloads(objs):
        for c in containers(spec):
            image = c["image"]
            if not pinned(image):
                problems.append(f"{name}/{c['name']}: image {image!r} is not an exact version")
    return problems


def lockdown_problems(objs) -> list[str]:
    """Every rule of the securityContext, as a list of what breaks it (empty: all hold)."""
    problems = []
    for (kind, name), obj in objs.items():
        if kind not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 1) == 0:
            problems.append(f"{name}: pod does not run as non-root")
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        claims = {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        claims |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for c in containers(spec):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged") or sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
                problems.append(f"{where}: privileged or root")
            caps = sc.get("capabilities", {})
            if caps.get("drop") != ["ALL"] or caps.get("add"):
                problems.append(f"{where}: capabilities are not drop ALL")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            for path in WRITABLE.get(c["name"], set()) - mounted:
                problems.append(f"{where}: {path} is not a mounted volume")
            for m in c.get("volumeMounts", []):
                writable = m["mountPath"] in WRITABLE.get(c["name"], set())
                if writable and m["name"] not in empty_dirs | claims:
                    problems.append(f"{where}: {m['mountPath']} is not emptyDir or a PVC")
    return problems


def test_every_image_is_pinned_to_an_exact_version(rendered):
    _, _, objs = rendered
    assert not image_problems(objs)
    images = {c["image"] for _, _, spec in workloads(objs) for c in containers(spec)}
    assert {i.split(":")[0] for i in images} >= {"postgres", "redis"}


def test_every_container_is_locked_down(rendered):
    _, _, objs = rendered
    assert ("CronJob", "config-backup") in objs  # the backup job is held to the same rules
    running = {c["name"] for _, _, spec in workloads(objs) for c in containers(spec)}
    assert running == set(WRITABLE), running  # a new container needs its writable paths here
    assert not lockdown_problems(objs)


def test_the_checks_catch_a_floating_tag_and_a_missing_security_context():
    spec = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{"name": "restore", "image": "modbot-ring:0.1.0"}],
        "containers": [
            {
                "name": "redis",
                "image": "redis:7.0",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                },
            }
        ],
    }
    objs = {("Deployment", "x"): {"kind": "Deployment", "spec": {"template": {"spec": spec}}}}
    assert image_problems(objs) == ["x/redis: image 'redis:7.0' is not an exact version"]
    found = lockdown_problems(objs)
    assert "x/restore: allowPrivilegeEscalation is not false" in found
    assert "x/restore: root filesystem is writable" in found
    assert "x/redis: capabilities are not drop ALL" in found
    assert "x/redis: /data is not a mounted volume" in found
    floating = ("postgres", "postgres:latest", "postgres:15", "redis:7.0", "x:1.2", "x@sha256:ab")
    for image in floating:
        assert not pinned(image), image
    for image in ("redis:7.0.15", "postgres:15.10", "postgres:15.10-bookworm", "r:5000/x/y:0.1.0"):
        assert pinned(image), image
    assert pinned("x/y:0.1.0@sha256:" + "a" * 64) and pinned("x@sha256:" + "0" * 64)
