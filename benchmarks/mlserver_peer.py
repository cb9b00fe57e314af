"""MLServer (sklearn runtime) as a benchmark peer, in its own virtualenv.

MLServer pins an older FastAPI than ours, so it cannot share our venv: `ensure_venv` creates one under the user's
cache folder (once; a marker file records what was installed) with pip, pinning the same scikit-learn and numpy
as ours so that the joblib file of our fitted model loads unchanged. `model_repository` writes the folder
`mlserver start` serves: settings.json, model-settings.json and model.joblib.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

MLSERVER_VERSION = "1.7.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelops-stack" / "bench-mlserver"


class NotMeasured(Exception):
    """A peer that cannot run here; the message says why (it goes into the report)."""


def requirements() -> list[str]:
    # httptools: MLServer's uvicorn uses http="auto", which picks httptools when it is installed (uvloop is a
    # dependency of mlserver already), i.e. the same HTTP stack our server runs on.
    return [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-sklearn=={MLSERVER_VERSION}",
        f"scikit-learn=={version('scikit-learn')}",
        f"numpy=={version('numpy')}",
        "httptools",
    ]


def ensure_venv(venv: Path = CACHE, timeout_s: float = 900) -> Path:
    """The venv's `mlserver` executable, installing it on first use; NotMeasured when that is impossible."""
    marker = venv / ".modelops-bench-requirements"
    wanted = "\n".join(requirements())
    mlserver = venv / "bin" / "mlserver"
    if mlserver.exists() and marker.exists() and marker.read_text() == wanted:
        return mlserver
    if sys.version_info >= (3, 13):
        raise NotMeasured(f"MLServer {MLSERVER_VERSION} supports Python < 3.13 only")
    print(f"installing MLServer {MLSERVER_VERSION} into {venv} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements()],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.CalledProcessError as exc:
        tail = (
            (exc.stderr or exc.stdout or "").strip().splitlines()[-3:] if isinstance(exc.stderr, str) else []
        )
        raise NotMeasured(f"creating the MLServer venv failed: {' / '.join(tail) or exc}") from None
    except subprocess.TimeoutExpired:
        raise NotMeasured(f"pip install of MLServer took longer than {timeout_s:.0f} s") from None
    marker.write_text(wanted)
    return mlserver


def versions(mlserver: Path) -> dict[str, str]:
    """Versions of the packages that decide MLServer's speed, read inside its venv."""
    code = (
        "import json\nfrom importlib.metadata import version\n"
        "names = ['mlserver', 'mlserver-sklearn', 'fastapi', 'starlette', 'uvicorn', 'httptools', 'uvloop',"
        " 'orjson', 'scikit-learn', 'numpy']\n"
        "out = {}\nfor n in names:\n    try: out[n] = version(n)\n    except Exception: out[n] = 'absent'\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [str(mlserver.parent / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


def model_repository(
    folder: Path, model_file: Path, model_name: str, ports: tuple[int, int, int], workers: int
) -> Path:
    """Write MLServer's settings for one sklearn model; `ports` are (http, grpc, metrics), all on loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = ports
    # One process per "worker", like the others: parallel_workers=0 runs inference in the HTTP process itself
    # (MLServer's default of 1 adds an inference process behind it); N > 1 gives N inference processes.
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0 if workers == 1 else workers,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": model_name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file)},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    return folder
