"""Serving benchmark: our model server vs `mlflow models serve` vs a plain FastAPI + numpy app.

Trains the reference model (StandardScaler + LogisticRegression on the built-in data) into a
throw-away MLflow server, starts every server on 127.0.0.1, drives each with the same wrk load
(single-row and 1000-row bodies, 8 connections) and prints req/s, p50/p99 and the ratios.
Only loopback addresses are used. Needs `wrk` (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk).

    python benchmarks/serving.py [--duration-s 10] [--connections 8] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import VENV_BIN, Service, free_port, mlflow_server, serve_argv  # noqa: E402

MODEL = "BenchmarkModel"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "r"); wrk.body = f:read("*a"); f:close()
"""


@dataclass
class Result:
    server: str
    load: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    url: str, body: Path, duration_s: int, connections: int, lua: Path
) -> tuple[float, float, float, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*timeout (\d+)", out)
    return (
        rps,
        p50,
        p99,
        (int(errors.group(1)) if errors else 0) + (int(socket_errors.group(1)) if socket_errors else 0),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--write", type=Path, help="write the results as Markdown to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk / brew install wrk)", file=sys.stderr)
        return 2

    import mlflow
    from sklearn.datasets import load_breast_cancer

    # `mlflow models serve` runs `uvicorn` from PATH.
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

    tmp = Path(tempfile.mkdtemp(prefix="modelops-bench-"))
    services: list[Service] = []
    results: list[Result] = []
    try:
        tracking = mlflow_server(tmp / "mlflow").start()
        services.append(tracking)
        uri = tracking.uri  # type: ignore[attr-defined]
        subprocess.run(
            [str(VENV_BIN / "modelops"), "train", "--tracking-uri", uri, "--model-name", MODEL],
            check=True,
            capture_output=True,
        )
        mlflow.set_tracking_uri(uri)
        model_path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL}/1", dst_path=str(tmp / "model")
        )

        data = load_breast_cancer(as_frame=True)
        rows = data.data.to_numpy().tolist()
        thousand = (rows * 2)[:1000]
        columns = list(data.data.columns)
        bodies = {
            ("ours", "1 row"): {"features": rows[0]},
            ("ours", "1000 rows"): {"instances": thousand},
            ("mlflow", "1 row"): {"dataframe_split": {"columns": columns, "data": [rows[0]]}},
            ("mlflow", "1000 rows"): {"dataframe_split": {"columns": columns, "data": thousand}},
        }
        files = {}
        for (kind, load), body in bodies.items():
            path = tmp / f"{kind}-{load.replace(' ', '')}.json"
            path.write_text(json.dumps(body))
            files[(kind, load)] = path
        lua = tmp / "post.lua"
        lua.write_text(LUA)

        def start(name: str, argv: list[str], health: str, env: dict[str, str], port: int) -> Service:
            service = Service(
                name, argv, f"http://127.0.0.1:{port}{health}", tmp, env=env, timeout_s=120
            ).start()
            services.append(service)
            return service

        candidates = []
        port = free_port()
        candidates.append(
            (
                "mlflow models serve (1 worker, default)",
                "mlflow",
                port,
                start(
                    "mlflow-serve",
                    [
                        str(VENV_BIN / "mlflow"),
                        "models",
                        "serve",
                        "-m",
                        f"models:/{MODEL}/1",
                        "--env-manager",
                        "local",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                    ],
                    "/ping",
                    {"MLFLOW_TRACKING_URI": uri},
                    port,
                ),
            )
        )
        port = free_port()
        candidates.append(
            (
                "plain FastAPI + numpy (uvicorn, 1 worker)",
                "ours",
                port,
                start(
                    "plain",
                    [
                        str(VENV_BIN / "uvicorn"),
                        "plain_app:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--no-access-log",
                        "--app-dir",
                        str(ROOT / "benchmarks"),
                    ],
                    "/docs",
                    {"MODEL_PATH": model_path},
                    port,
                ),
            )
        )
        for workers in (1, 2):
            port = free_port()
            candidates.append(
                (
                    f"modelops serve --workers {workers}",
                    "ours",
                    port,
                    start(
                        f"modelops-{workers}",
                        serve_argv(port, workers),
                        "/readyz",
                        {"MLFLOW_TRACKING_URI": uri, "MODELOPS_MODEL_NAME": MODEL},
                        port,
                    ),
                )
            )
        # Only one server runs the load at a time; the others idle.
        for label, kind, port, _ in candidates:
            path = "/invocations" if kind == "mlflow" else "/predict"
            for load in ("1 row", "1000 rows"):
                run_wrk(
                    f"http://127.0.0.1:{port}{path}", files[(kind, load)], 2, args.connections, lua
                )  # warm up
                rps, p50, p99, errors = run_wrk(
                    f"http://127.0.0.1:{port}{path}",
                    files[(kind, load)],
                    args.duration_s,
                    args.connections,
                    lua,
                )
                results.append(Result(label, load, rps, p50, p99, errors))
                print(
                    f"{label:45s} {load:10s} {rps:9.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}"
                )
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report = render(results, args)
    print()
    print(report)
    if args.write:
        args.write.write_text(report)
    return 0


def render(results: list[Result], args: argparse.Namespace) -> str:
    def find(prefix: str, load: str) -> Result:
        return next(r for r in results if r.server.startswith(prefix) and r.load == load)

    lines = [
        "# Serving benchmark",
        "",
        f"Measured by `python benchmarks/serving.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}. Model: the trainer's default "
        "(StandardScaler + LogisticRegression, 30 features). Load: `wrk -t1 "
        f"-c{args.connections} -d{args.duration_s}s` on 127.0.0.1, after a 2 s warm-up; wrk shares the 2 cores with "
        "the server under test. Bodies: one row, or 1000 rows (`instances` for ours and the plain app, "
        "`dataframe_split` for MLflow).",
        "",
        "| server | body | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.load} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        )
    best = "modelops serve --workers 2"
    lines += ["", "Ratios (ours = `modelops serve --workers 2`):", ""]
    for load in ("1 row", "1000 rows"):
        ours, ref = find(best, load), find("mlflow", load)
        plain = find("plain", load)
        lines.append(
            f"- {load}: {ours.rps / ref.rps:.1f}x `mlflow models serve`, "
            f"{ours.rps / plain.rps:.2f}x the plain FastAPI app; p99 {ours.p99_ms:.2f} ms"
        )
    lines += [
        "",
        "Reproduce: `make bench` (needs `wrk`: `apt-get install wrk` / `brew install wrk`). Numbers move by",
        "10-20% between runs on this 2-core machine, since wrk competes with the server for the cores.",
        "",
        "Why it is faster: requests are parsed straight from JSON into one float64 array (no DataFrame, no",
        "per-column schema enforcement); the model predicts through its native sklearn flavour with",
        "`assume_finite` (inputs are checked once); concurrent requests share one predict call (adaptive",
        "micro-batching); responses are serialized with orjson; accepted sockets get TCP_NODELAY; and each",
        "worker listens on its own SO_REUSEPORT socket so the kernel spreads connections across workers.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
