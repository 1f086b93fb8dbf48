"""Docker for the container tests (tests/test_container.py), made to work on a machine with
Debian's docker.io and no registry: a daemon started here when none runs (vfs storage, no
bridge: containers use the host's loopback only), a Debian base made with debootstrap and
cached by a digest of its recipe, the locked wheels downloaded once per lock digest, and the
repository's own Dockerfile built from them with the network off.

Anything the machine cannot provide (no engine, not root, no debootstrap, no package
mirror) raises ``Unavailable``, which the tests turn into a skip with that reason."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conftest import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("MODBOT_CONTAINER_CACHE") or Path.home() / ".cache" / "modbot-ring" / "container"
)
SUITE = "bookworm"
# what the Dockerfile needs from a base: python3 + venv; pg_dump for `db backup`
BASE_PACKAGES = ("python3", "python3-venv", "postgresql-client")
BASE_RECIPE = 1  # bump when the way the base is made changes
# trimmed from the base: nothing at run time reads them
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
IMAGE = "modbot-ring:test"
LABEL = "modbot-ring-test"
# what a build context needs (the same list .dockerignore lets through)
CONTEXT = (
    "Dockerfile",
    ".dockerignore",
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "modbot_ring",
    "modbot_runtime",
    "modbot_client",
    "config_store",
    "router_proxy",
    "gateway_app",
    "discord_sim",
    "modbot_cli",
    "deploy",
)


class Unavailable(Exception):
    """This machine cannot run the container tests; the message says why."""


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


@dataclass
class Docker:
    """The docker client, and the daemon if this process started it."""

    cli: str
    daemon: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [self.cli, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed: {out.stderr[:2000]}")
        return out

    def alive(self) -> bool:
        try:
            return (
                self("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the daemon if this process started it (TERM, then KILL after 30 s)."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        os.killpg(self.daemon.pid, signal.SIGTERM)
        try:
            self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait(10)


def docker_cli() -> str | None:
    """Debian's client first: it drives the engine's built-in BuildKit without the buildx
    plugin (a newer static client would need it)."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_daemon(timeout: float = 60) -> Docker:
    """A reachable Docker engine: the running one, or dockerd started here (root only)."""
    cli = docker_cli()
    if cli is None:
        raise Unavailable("no docker client (Debian: apt-get install docker.io)")
    docker = Docker(cli)
    if docker.alive():
        return docker
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
    if dockerd is None:
        raise Unavailable("no Docker engine running and dockerd is not installed (docker.io)")
    if os.geteuid() != 0:
        raise Unavailable("no Docker engine running, and starting dockerd needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    docker.log = CACHE / "dockerd.log"
    with open(docker.log, "wb") as log:
        # vfs: works on any filesystem; no bridge and no iptables: nothing but --network
        # host/none exists, so no container traffic can leave the loopback
        docker.daemon = subprocess.Popen(
            [
                dockerd,
                "--storage-driver=vfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def up() -> bool:
        if docker.daemon is not None and docker.daemon.poll() is not None:
            raise Unavailable("dockerd exited")
        return docker.alive()

    try:
        eventually_sync(up, timeout=timeout, interval=0.25)
    except (AssertionError, Unavailable) as exc:
        docker.stop()
        raise Unavailable(f"dockerd did not start: {_tail(docker.log)}") from exc
    return docker


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder of a cached artifact at a time (two test runs on one machine)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def debian_mirror() -> str:
    """The Debian mirror apt uses here for the suite (deb822 .sources or one-line lists)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1)
                for line in stanza.splitlines()
                if ":" in line and not line.startswith("#")
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "/debian" in fields.get("URIs", ""):
                return fields["URIs"].split()[0].strip()
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        with contextlib.suppress(OSError):
            for m in re.finditer(
                rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", path.read_text(), re.M
            ):
                return m.group(1)
    raise Unavailable("apt names no Debian mirror for bookworm (/etc/apt/sources.list.d)")


def base_digest(mirror: str) -> str:
    recipe = {
        "recipe": BASE_RECIPE,
        "suite": SUITE,
        "variant": "minbase",
        "packages": BASE_PACKAGES,
        "trim": BASE_TRIM,
        "mirror": mirror,
        "arch": os.uname().machine,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def base_image(docker: Docker, timings: dict[str, float]) -> str:
    """``modbot-ring-base:<digest>``: imported from the cached tarball, which is made with
    debootstrap only when missing (written to a temporary name, then renamed)."""
    mirror = debian_mirror()
    digest = base_digest(mirror)
    tag = f"modbot-ring-base:{digest}"
    if docker.has_image(tag):
        return tag
    tarball = CACHE / f"base-{digest}.tar"
    with _locked("base"):
        if not tarball.exists():
            started = time.monotonic()
            _debootstrap(mirror, tarball)
            timings["debootstrap"] = time.monotonic() - started
    started = time.monotonic()
    docker(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        str(tarball),
        tag,
        timeout=300,
    )
    timings["import"] = time.monotonic() - started
    return tag


def _debootstrap(mirror: str, tarball: Path) -> None:
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if debootstrap is None:
        raise Unavailable("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "root"
        log = CACHE / "debootstrap.log"
        with open(log, "wb") as out:
            proc = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        if proc.returncode != 0:
            raise Unavailable(
                f"debootstrap from {mirror} failed ({proc.returncode}): {_tail(log, 4)}"
            )
        for rel in BASE_TRIM:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            check=True,
            timeout=300,
        )
        partial.rename(tarball)
    _drop_stale("base-*.tar", keep=tarball)


def _drop_stale(pattern: str, keep: Path) -> None:
    """Cached artifacts of an older recipe or lock: nothing will ask for them again."""
    for path in CACHE.glob(pattern):
        if path != keep and not path.name.endswith(".partial"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def lock_digest() -> str:
    return hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:16]


def wheelhouse(timings: dict[str, float]) -> Path:
    """The locked wheels (hash-checked by pip), downloaded once per lock digest."""
    target = CACHE / f"wheels-{lock_digest()}"
    if target.is_dir():
        return target
    with _locked("wheels"):
        if target.is_dir():
            return target
        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(dir=CACHE, prefix="wheels-partial-"))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--require-hashes",
                "--only-binary=:all:",
                "-r",
                str(ROOT / "requirements.lock"),
                "-d",
                str(partial),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise Unavailable(f"cannot download the locked wheels: {out.stderr.strip()[-500:]}")
        partial.rename(target)
        timings["wheels"] = time.monotonic() - started
        _drop_stale("wheels-*", keep=target)
    return target


def build_context(dest: Path, wheels: Path) -> Path:
    """The repository's build context plus the wheels under deploy/wheelhouse."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in CONTEXT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    shutil.copytree(wheels, dest / "deploy" / "wheelhouse", copy_function=_link_or_copy)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_image(docker: Docker, base: str, context: Path, tag: str = IMAGE) -> None:
    """The Dockerfile, BuildKit, network off: everything comes from the base and the wheels."""
    env = {**docker.env, "DOCKER_BUILDKIT": "1"}
    out = subprocess.run(
        [
            docker.cli,
            "build",
            "--progress=plain",
            "--network=none",
            "--label",
            f"{LABEL}=1",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-arg",
            "PIP_FIND_LINKS=/src/deploy/wheelhouse",
            "-t",
            tag,
            str(context),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
        check=False,
    )
    if out.returncode != 0:
        if "buildx" in out.stderr:
            raise Unavailable(
                f"this docker client needs the buildx plugin: {out.stderr.strip()[:300]}"
            )
        raise AssertionError(f"docker build failed:\n{(out.stdout + out.stderr)[-4000:]}")
    # earlier test images this replaced: vfs keeps a full copy of each
    docker("image", "prune", "-f", "--filter", f"label={LABEL}=1", check=False)


def run_args(
    name: str, env: dict[str, str], volume: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """``docker run`` as the manifests run a container: host loopback only, read-only root,
    /tmp as a small tmpfs, no capabilities, no privilege escalation."""
    args = [
        "run",
        "-d",
        "--name",
        name,
        "--label",
        f"{LABEL}=1",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=64m",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *extra,
    ]
    if volume:
        args += ["-v", f"{volume}:/data"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args
