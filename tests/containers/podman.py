"""Podman on these machines: configuration, a Debian base image made with debootstrap (cached), image builds.

Rootful podman with runc, cgroupfs and explicit ulimits (see shared/containers.md), and the CNI network
backend where its DNS plugin is installed (see `network_backend`); a private storage folder keeps test images
apart from anything else on the machine. The base images are saved as files
keyed by their package list, so a re-run loads them in seconds instead of running debootstrap again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelops-stack" / "containers"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
POSTGRES_PACKAGES = (*BASE_PACKAGES, "postgresql")
BASE_IMAGE = "localhost/modelops-e2e-base:bookworm"
POSTGRES_BASE_IMAGE = "localhost/modelops-e2e-postgres-base:bookworm"
APP_IMAGE = "localhost/modelops:e2e"
POSTGRES_IMAGE = "localhost/modelops-e2e-postgres:15"
MOTO_IMAGE = "localhost/modelops-e2e-moto:5"
# What `podman exec`/`podman run` itself may take on a busy machine, on top of the command's own timeout.
PODMAN_OVERHEAD_S = 10.0

CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
# Where podman (before 5.0) looks for CNI plugins (containers.conf's cni_plugin_dirs default).
CNI_PLUGIN_DIRS = (
    "/usr/local/libexec/cni",
    "/usr/libexec/cni",
    "/usr/local/lib/cni",
    "/usr/lib/cni",
    "/opt/cni/bin",
)


@functools.cache
def network_backend() -> str | None:
    """The network backend the harness asks podman for, or None to leave podman's own choice (netavark for a
    new storage when it is installed, else CNI).

    CNI whenever podman still has it (before 5.0) and the dnsname plugin is installed
    (golang-github-containernetworking-plugin-dnsname, which .ci/run installs): bookworm's aardvark-dns 1.4,
    netavark's DNS server, restarts its listeners whenever a container joins or leaves a network and drops the
    queries that arrive meanwhile (containers/aardvark-dns#389, fixed upstream in 2024), so with a dozen
    containers starting at once a workload now and then fails to resolve a Service. dnsname's dnsmasq reloads
    without dropping queries."""
    if not any(Path(folder, "dnsname").exists() for folder in CNI_PLUGIN_DIRS):
        return None
    version = subprocess.run(["podman", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.\d+", version)
    return "cni" if match and int(match.group(1)) < 5 else None


def _write(path: Path, text: str) -> None:
    """Replace a config file atomically and only when it changes: podman processes read it concurrently."""
    if path.exists() and path.read_text() == text:
        return
    part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    part.write_text(text)
    part.replace(path)


def environment() -> dict[str, str]:
    """Environment for podman commands: our containers.conf and a private storage."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    backend = network_backend()
    _write(conf, CONTAINERS_CONF + (f'[network]\nnetwork_backend = "{backend}"\n' if backend else ""))
    storage = CACHE / "storage.conf"
    _write(
        storage,
        f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE / "storage"}"\nrunroot = "{CACHE / "run"}"\n',
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def podman(
    *args: str, check: bool = True, timeout: float = 900, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=environment(), capture_output=capture, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def usable() -> str | None:
    """None when rootful podman can run a container here, else the reason it cannot."""
    if shutil.which("podman") is None:
        return "podman is not installed (see DEVELOPERS.md for the packages; .ci/run installs them)"
    if os.geteuid() != 0:
        return "the container tests need rootful podman (run as root, as CI does)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed"
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if probe.returncode != 0:
        return f"podman does not work here: {probe.stderr.strip()[:300]}"
    return None


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        if match:
            return match.group(1)
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        match = re.search(r"^deb\s+(\S+)\s+" + SUITE, listing.read_text(), re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def _base(image: str, packages: tuple[str, ...]) -> None:
    """debootstrap a minimal Debian with `packages`, import it as `image`; cached as a file by package list."""
    if image_exists(image):
        return
    key = hashlib.sha256(json.dumps([SUITE, sorted(packages)]).encode()).hexdigest()[:16]
    saved = CACHE / f"{image.rsplit('/', 1)[-1].replace(':', '-')}-{key}.tar"
    if saved.exists():
        podman("load", "-i", str(saved))
        podman(
            "tag",
            podman("images", "-q", "--filter", f"reference={image}", check=False).stdout.strip() or image,
            image,
            check=False,
        )
        if image_exists(image):
            return
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE) as rootfs:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, rootfs, _mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in Path(rootfs, junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--change", "ENV LANG=C.UTF-8", "-", image],
            stdin=tar.stdout,
            env=environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr}")
    podman("save", "-o", str(saved), image)


def _build(tag: str, containerfile: Path, context: Path, build_args: dict[str, str]) -> None:
    args = ["build", "-t", tag, "-f", str(containerfile)]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=cabundle,src={CA_BUNDLE}"]
    podman(*args, str(context), timeout=1800)


def build_images() -> dict[str, str]:
    """Every image the end-to-end test runs: the product image (the repo's Dockerfile, unchanged, on a
    local base), PostgreSQL (Debian's package, behaving like the official image), moto (S3 endpoint), and
    the base itself (python3 for the harness's network checks)."""
    here = Path(__file__).resolve().parent
    # Independent steps run side by side: they wait mostly on the network and the package index.
    with ThreadPoolExecutor(max_workers=3) as pool:
        bases = [
            pool.submit(_base, BASE_IMAGE, BASE_PACKAGES),
            pool.submit(_base, POSTGRES_BASE_IMAGE, POSTGRES_PACKAGES),
        ]
        for future in bases:
            future.result()
        builds = [
            pool.submit(_build, APP_IMAGE, ROOT / "Dockerfile", ROOT, {"BASE_IMAGE": BASE_IMAGE}),
            pool.submit(
                _build,
                POSTGRES_IMAGE,
                here / "postgres.Containerfile",
                here,
                {"BASE_IMAGE": POSTGRES_BASE_IMAGE},
            ),
            pool.submit(_build, MOTO_IMAGE, here / "moto.Containerfile", here, {"BASE_IMAGE": BASE_IMAGE}),
        ]
        for future in builds:
            future.result()
    return {"base": BASE_IMAGE, "app": APP_IMAGE, "postgres": POSTGRES_IMAGE, "moto": MOTO_IMAGE}
