"""README's "Cost and sizing" table says what the manifests really request: every container
of every workload in the rendered production overlay has its row (replicas, CPU and memory
requests, memory limit, volume claims), and the totals are the sums of the manifests."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = Path(sys.executable).parent / "kubectl"
WORKLOADS = ("Deployment", "StatefulSet", "CronJob")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def cpu_milli(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def mebibytes(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", text)
    assert m, f"not a binary quantity: {text!r}"
    return float(m.group(1)) * UNITS[m.group(2)] / 2**20


@dataclass(frozen=True)
class Row:
    workload: str
    kind: str
    container: str
    role: str  # "container", "init", "job"
    replicas: int
    max_replicas: int
    cpu: int  # millicores
    memory: float  # MiB
    limit: float
    claims: tuple[float, ...]  # PVC sizes, MiB


def manifest_rows(objs: list[dict[str, Any]]) -> list[Row]:
    hpa_max = {
        o["spec"]["scaleTargetRef"]["name"]: o["spec"]["maxReplicas"]
        for o in objs
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    rows = []
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        name, spec = obj["metadata"]["name"], obj["spec"]
        job = obj["kind"] == "CronJob"
        pod = (spec["jobTemplate"]["spec"] if job else spec)["template"]["spec"]
        replicas = 1 if job else spec.get("replicas", 1)
        claims = tuple(
            mebibytes(t["spec"]["resources"]["requests"]["storage"])
            for t in spec.get("volumeClaimTemplates", [])
        )
        for role, containers in (("init", pod.get("initContainers", [])), ("", pod["containers"])):
            for c in containers:
                res = c.get("resources", {})
                rows.append(
                    Row(
                        workload=name,
                        kind=obj["kind"],
                        container=c["name"],
                        role=role or ("job" if job else "container"),
                        replicas=replicas,
                        max_replicas=hpa_max.get(name, replicas),
                        cpu=cpu_milli(res["requests"]["cpu"]),
                        memory=mebibytes(res["requests"]["memory"]),
                        limit=mebibytes(res["limits"]["memory"]),
                        claims=claims,
                    )
                )
    return rows


def readme_table(text: str) -> list[list[str]]:
    section = text.split("\n## Cost and sizing\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header, _, *body = lines
    assert "Memory limit" in header
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in body]


def first(cell: str, pattern: str) -> str:
    m = re.search(pattern, cell)
    assert m, f"no {pattern} in {cell!r}"
    return m.group(0)


def _replicas(row: Row) -> int:
    return row.replicas


def _max_replicas(row: Row) -> int:
    return row.max_replicas


def table_problems(rows: list[Row], table: list[list[str]]) -> list[str]:
    problems = []
    by_key = {(r.workload, r.container): r for r in rows}
    seen = set()
    totals = {}
    for cells in table:
        workload, container, replicas, cpu, memory, limit, disk = cells[:7]
        if workload.startswith("**"):
            totals[workload.strip("*")] = (cpu, memory, limit, disk)
            continue
        key = (workload.split()[0], container.split()[0])
        seen.add(key)
        row = by_key.get(key)
        if row is None:
            problems.append(f"README row {key} is in no manifest")
            continue
        if f"({row.kind}" not in workload:
            problems.append(f"{key}: kind is {row.kind}")
        if int(first(replicas, r"\d+")) != row.replicas:
            problems.append(f"{key}: replicas {row.replicas}, README {replicas}")
        if row.max_replicas != row.replicas and f"up to {row.max_replicas}" not in replicas:
            problems.append(f"{key}: the HPA scales to {row.max_replicas}")
        if cpu_milli(first(cpu, r"\d+m")) != row.cpu:
            problems.append(f"{key}: CPU request {row.cpu}m, README {cpu}")
        if mebibytes(first(memory, r"\d+(Mi|Gi)")) != row.memory:
            problems.append(f"{key}: memory request {row.memory}Mi, README {memory}")
        if mebibytes(first(limit, r"\d+(Mi|Gi)")) != row.limit:
            problems.append(f"{key}: memory limit {row.limit}Mi, README {limit}")
        if row.role == "container" and row.claims:
            claims = [mebibytes(q) for q in re.findall(r"(\d+(?:Mi|Gi)) PVC", disk)]
            if container.split()[0] == workload.split()[0] and claims != list(row.claims):
                problems.append(f"{key}: volume claims {row.claims} MiB, README {disk}")
        if row.role == "init" and "init" not in container:
            problems.append(f"{key}: an init container, the README does not say so")
    for key in sorted(set(by_key) - seen):
        problems.append(f"{key} (in the manifests) has no README row")

    running = [r for r in rows if r.role == "container"]
    claim_total = sum(r.replicas * sum(r.claims) for r in rows if r.container == r.workload)
    for label, count in (
        ("Total, steady state", _replicas),
        (f"Total, {max(r.max_replicas for r in rows)} proxies", _max_replicas),
    ):
        if label not in totals:
            problems.append(f"no {label!r} row")
            continue
        cpu, memory, limit, disk = totals[label]
        want = (
            sum(count(r) * r.cpu for r in running),
            sum(count(r) * r.memory for r in running),
            sum(count(r) * r.limit for r in running),
        )
        got = (
            cpu_milli(first(cpu, r"\d+m")),
            mebibytes(first(memory, r"\d+(Mi|Gi)")),
            mebibytes(first(limit, r"\d+(Mi|Gi)")),
        )
        if got != want:
            problems.append(f"{label}: manifests {want} (m, MiB, MiB), README {got}")
        if mebibytes(first(disk, r"\d+(Mi|Gi)")) != claim_total:
            problems.append(f"{label}: volume claims {claim_total} MiB, README {disk}")
    return problems


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "manifests" / "overlays" / "production")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_readme_table_matches_what_the_manifests_request(
    rendered: list[dict[str, Any]],
) -> None:
    rows = manifest_rows(rendered)
    assert {r.container for r in rows} >= {"gateway", "litestream", "restore", "redis", "backup"}
    table = readme_table((ROOT / "README.md").read_text())
    assert table_problems(rows, table) == []


def test_a_changed_request_a_new_sidecar_or_a_wrong_total_is_caught(
    rendered: list[dict[str, Any]],
) -> None:
    rows = manifest_rows(rendered)
    table = readme_table((ROOT / "README.md").read_text())
    gateway = next(r for r in rows if r.container == "gateway")
    bumped = [r if r is not gateway else Row(**{**r.__dict__, "memory": 384.0}) for r in rows]
    sidecar = Row(**{**gateway.__dict__, "container": "exporter", "cpu": 5})
    problems = "\n".join(table_problems([*bumped, sidecar], table))
    assert "('gateway', 'gateway'): memory request 384.0Mi" in problems
    assert "('gateway', 'exporter') (in the manifests) has no README row" in problems
    assert "Total, steady state: manifests" in problems
    dropped = [cells for cells in table if cells[1].split()[0] != "litestream"]
    assert "('gateway', 'litestream') (in the manifests) has no README row" in "\n".join(
        table_problems(rows, dropped)
    )


def test_the_seed_figures_are_quoted_as_the_seed_gives_them() -> None:
    seed_file = ROOT.parent / "shared" / "architecture-seed.md"  # beside the repository
    seed = seed_file.read_text() if seed_file.exists() else ""
    section = (ROOT / "README.md").read_text().split("\n## Cost and sizing\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    # the seed's proposal: 3 gateways at 256Mi/50m, 2 HTTP and 2 config pods at 128Mi/20m
    times = "\u00d7"  # the multiplication sign, as the README writes it
    assert f"3 {times} 256Mi, 50m" in section and f"2 {times} 128Mi, 20m" in section
    assert "~$40\u201350/month" in section and "~$10/month" in section
    if seed:
        assert "256Mi RAM, 50m CPU" in seed and "128Mi RAM, 20m CPU" in seed
        assert "$40-50/month" in seed and "~$10/month" in seed
