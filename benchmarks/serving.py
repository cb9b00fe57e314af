"""Serving benchmark: our model server vs its peers, side by side in one run, equal worker counts.

Peers (each `--workers N`, default 1 process each): MLServer with its sklearn runtime (own venv under
~/.cache/modelops-stack/bench-mlserver, created on first use), an async plain FastAPI app (orjson + numpy),
a bare ASGI app on the same uvicorn (the HTTP ceiling) and `mlflow models serve`. Every server serves the SAME
fitted model: the trainer's default, trained, signed and registered into a throw-away MLflow server (auth on, as
in the product); ours loads it from the registry like in production, the others from a local copy.

Workloads: wrk -t1 at 8 and 32 connections, single-row and 1000-row bodies, v2 infer (Open Inference Protocol
JSON) and our simple /predict (`features`, `instances`); cold start (spawn to first successful prediction) and
RSS of each server's processes (from /proc) after its load. Every server is started, waited for with a deadline
and stopped even on failure; a peer that cannot run here is reported as "not measured (why)".
Only loopback addresses are used. Needs `wrk` (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk).

    python benchmarks/serving.py [--duration-s 8] [--warmup-s 2] [--workers 1] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.support import TEST_PASSWORDS, VENV_BIN, free_port, mlflow_server, principal_env, serve_argv  # noqa: E402

import mlserver_peer  # noqa: E402
from mlserver_peer import NotMeasured  # noqa: E402
from modelops.local.processes import stop_group  # noqa: E402

MODEL = "BenchmarkModel"
START_DEADLINE_S = 120.0
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "r"); wrk.body = f:read("*a"); f:close()
"""


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    body: str  # one of BODY_KINDS
    connections: int


# v2 = Open Inference Protocol JSON (one FP64 tensor [N, 30], only the `predict` output asked for, so that every
# server does the same work); features/instances = our /predict bodies (mlflow gets the same rows as
# `dataframe_split`, the bare ASGI app gets the same bytes and ignores them).
WORKLOADS = [
    Workload("v2-1-c8", "v2 infer, 1 row, c8", "v2-1", 8),
    Workload("v2-1-c32", "v2 infer, 1 row, c32", "v2-1", 32),
    Workload("v2-1000-c8", "v2 infer, 1000 rows, c8", "v2-1000", 8),
    Workload("v2-1000-c32", "v2 infer, 1000 rows, c32", "v2-1000", 32),
    Workload("features-c8", "/predict features, 1 row, c8", "features", 8),
    Workload("features-c32", "/predict features, 1 row, c32", "features", 32),
    Workload("instances-c8", "/predict instances, 1000 rows, c8", "instances", 8),
    Workload("instances-c32", "/predict instances, 1000 rows, c32", "instances", 32),
]


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Peer:
    key: str
    label: str
    argv: list[str]
    env: dict[str, str]
    port: int
    paths: dict[str, str]  # body kind -> URL path; kinds not listed are not measured on this server
    bodies: dict[str, Path] = field(default_factory=dict)  # overrides of the shared body files
    proc: subprocess.Popen[bytes] | None = None
    cold_start_s: float | None = None  # the last start's
    cold_starts: list[float] = field(
        default_factory=list
    )  # every start's (the first, then --cold-starts more)
    rss: tuple[float, int] | None = None  # MiB summed over the server's processes, process count
    results: dict[str, Result | str] = field(default_factory=dict)  # workload key -> result or why not
    not_measured: str | None = None
    what: dict[str, str] = field(default_factory=dict)  # body kind -> how the table names it on this server
    notes: list[str] = field(default_factory=list)  # what the report says of this server's run


# -- processes ------------------------------------------------------------------------------------------------
def start_and_wait(peer: Peer, body: Path, log_dir: Path, deadline_s: float = START_DEADLINE_S) -> None:
    """Spawn the server in its own session and wait (with a deadline) for its first successful prediction;
    the time between is its cold start. Raises RuntimeError with the log's tail when it does not come up."""
    kind = next(iter(peer.paths))
    url = f"http://127.0.0.1:{peer.port}{peer.paths[kind]}"
    payload = peer.bodies.get(kind, body).read_bytes()
    log_path = log_dir / f"{peer.key}.log"
    log = log_path.open("ab")
    started = time.monotonic()
    peer.proc = subprocess.Popen(
        peer.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **peer.env},
        start_new_session=True,
    )
    last = ""
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - started < deadline_s:
            if peer.proc.poll() is not None:
                raise RuntimeError(f"exited with {peer.proc.returncode}: {tail(log_path)}")
            try:
                response = client.post(url, content=payload, headers={"content-type": "application/json"})
                if response.status_code == 200:
                    peer.cold_start_s = time.monotonic() - started
                    peer.cold_starts.append(peer.cold_start_s)
                    return
                last = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.05)
    raise RuntimeError(f"no successful prediction within {deadline_s:.0f} s (last: {last}): {tail(log_path)}")


def stop(peer: Peer) -> None:
    if peer.proc is not None:
        stop_group(peer.proc.pid, timeout_s=15)  # the product's supervisor: SIGTERM the group, then SIGKILL
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.proc.wait(timeout=5)
        peer.proc = None


def tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def session_processes(sid: int) -> Iterator[tuple[Path, list[str]]]:
    """Each live process of session `sid`: its /proc folder and the fields of its stat line after the ")" that
    ends the command name (state ppid pgrp session ...)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                yield entry, fields
        except (OSError, IndexError, ValueError):
            continue


def session_rss(sid: int) -> tuple[float, int]:
    """Resident memory (MiB) summed over every live process of session `sid`, and how many there are."""
    total_kib, count = 0, 0
    for entry, _ in session_processes(sid):
        try:
            rss = re.search(r"VmRSS:\s+(\d+) kB", (entry / "status").read_text())
        except OSError:
            continue
        if rss:
            total_kib += int(rss.group(1))
            count += 1
    return total_kib / 1024, count


def session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid`, and by the children they
    have reaped (a finished worker process's time moves to its parent's cutime/cstime: without them, a child ending
    during a measurement would subtract its whole life from it)."""
    ticks = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime and cstime are the 12th to 15th fields after the command name
    return sum(sum(int(x) for x in f[11:15]) for _, f in session_processes(sid)) / ticks


# -- load -----------------------------------------------------------------------------------------------------
def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, body: Path, duration_s: int, connections: int, lua: Path) -> Result:
    """One wrk run; RuntimeError (with wrk's output) when its report cannot be read."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        check=True,
        timeout=duration_s + 30,
    ).stdout
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    except (AttributeError, KeyError) as exc:
        raise RuntimeError(f"unreadable wrk report: {' | '.join(out.strip().splitlines()[-8:])}") from exc
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Result(
        rps,
        p50,
        p99,
        (int(errors.group(1)) if errors else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
    )


# -- setup ----------------------------------------------------------------------------------------------------
def bodies(tmp: Path, rows: list[list[float]], columns: list[str], input_name: str) -> dict[str, Path]:
    thousand = (rows * 2)[:1000]

    def v2(data: list[list[float]]) -> dict[str, object]:
        flat = [v for row in data for v in row]
        return {
            "inputs": [
                {"name": input_name, "shape": [len(data), len(columns)], "datatype": "FP64", "data": flat}
            ],
            "outputs": [{"name": "predict"}],
        }

    content = {
        "v2-1": v2(rows[:1]),
        "v2-1000": v2(thousand),
        "features": {"features": rows[0]},
        "instances": {"instances": thousand},
        "mlflow-features": {"dataframe_split": {"columns": columns, "data": rows[:1]}},
        "mlflow-instances": {"dataframe_split": {"columns": columns, "data": thousand}},
    }
    files = {}
    for kind, body in content.items():
        files[kind] = tmp / f"{kind}.json"
        files[kind].write_text(json.dumps(body))
    return files


def train_signed_model(tmp: Path, uri: str, env: dict[str, str]) -> Path:
    """Train + sign + register version 1 (moved to `champion`) as the trainer principal; return a joblib copy of
    the fitted model for the peers that load a local file."""
    done = subprocess.run(
        [str(VENV_BIN / "modelops"), "train", "--tracking-uri", uri, "--model-name", MODEL],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"modelops train failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )
    import joblib
    import mlflow
    import skops.io

    from modelops.serving.model import TRUSTED_SKOPS_TYPES

    mlflow.set_tracking_uri(uri)
    folder = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/1", dst_path=str(tmp / "model"))
    )
    fitted = skops.io.load(folder / "model.skops", trusted=list(TRUSTED_SKOPS_TYPES))
    model_file = tmp / "model.joblib"
    joblib.dump(fitted, model_file)
    return model_file


def our_versions() -> dict[str, str]:
    out = {}
    for name in (
        "modelops",
        "mlflow",
        "fastapi",
        "starlette",
        "uvicorn",
        "httptools",
        "uvloop",
        "orjson",
        "scikit-learn",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, AttributeError):
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()  # type: ignore[union-attr]
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" [")[0]
    return (
        f"nproc {os.cpu_count()}, {cpu}, {platform.system()} {platform.release()} {platform.machine()}, "
        f"Python {platform.python_version()}, {wrk}"
    )


# -- main -----------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=int, default=8, help="wrk duration of each measured workload")
    parser.add_argument(
        "--warmup-s", type=int, default=2, help="wrk warm-up before each workload (not counted)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes of EVERY server")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated server keys to run (ours,ours-log,mlserver,fastapi,bare,mlflow)",
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=5,
        help="cold starts per server, each a fresh process after the workloads (one start is noisy)",
    )
    parser.add_argument("--write", type=Path, help="write the results as Markdown to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk / brew install wrk)", file=sys.stderr)
        return 2

    from sklearn.datasets import load_breast_cancer

    from modelops.serving.service import INPUT_NAME
    from modelops.signing import generate_keypair

    # `mlflow models serve` runs `uvicorn` from PATH.
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    tmp = Path(tempfile.mkdtemp(prefix="modelops-bench-"))
    workers = args.workers
    peers: list[Peer] = []
    extra: dict[str, object] = {"mlserver_versions": None}
    tracking = None
    try:
        # MLflow with auth + a signed model, as the product requires
        tracking = mlflow_server(tmp / "mlflow").start()
        uri = tracking.uri
        tracking.grant(MODEL)
        private, public = tmp / "signing-key.pem", tmp / "signing-public.pem"
        generate_keypair(private, public)
        trainer = {**principal_env("trainer"), "MODELOPS_SIGNING_KEY_PATH": str(private)}
        os.environ.update(principal_env("trainer"))  # this process downloads the model as the trainer
        model_file = train_signed_model(tmp, uri, trainer)

        data = load_breast_cancer(as_frame=True)
        files = bodies(tmp, data.data.to_numpy().tolist(), list(data.data.columns), INPUT_NAME)
        lua = tmp / "post.lua"
        lua.write_text(LUA)

        v2_path = f"/v2/models/{MODEL}/infer"
        uvicorn = [
            str(VENV_BIN / "uvicorn"),
            "--host",
            "127.0.0.1",
            "--no-access-log",
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--workers",
            str(workers),
            "--app-dir",
            str(ROOT / "benchmarks"),
        ]
        ours_env = {
            **principal_env("model-server"),
            "MLFLOW_TRACKING_URI": uri,
            "MODELOPS_MODEL_NAME": MODEL,
            "MODELOPS_SIGNING_PUBLIC_KEY_PATH": str(public),
        }
        ours_paths = {"features": "/predict", "v2-1": v2_path, "v2-1000": v2_path, "instances": "/predict"}
        port = free_port()
        peers.append(
            Peer(
                "ours",
                f"modelops serve --workers {workers} (prediction log off)",
                serve_argv(port, workers),
                # the same work as the peers, none of which records the requests it answers
                {**ours_env, "MODELOPS_PREDICTION_LOG_SAMPLE_RATE": "0"},
                port,
                ours_paths,
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "ours-log",
                f"modelops serve --workers {workers} (defaults: prediction log on)",
                serve_argv(port, workers),
                {
                    **ours_env,
                    # the write principal, as `modelops up` and the chart give it: the log uploads every answered
                    # row through MLflow's artifact proxy
                    "MODELOPS_REGISTRY_WRITE_USERNAME": "operator",
                    "MODELOPS_REGISTRY_WRITE_PASSWORD": TEST_PASSWORDS["operator"],
                },
                port,
                ours_paths,
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "mlserver",
                f"MLServer + sklearn runtime ({workers} process{'es' if workers > 1 else ''})",
                [],
                {},
                port,
                {"v2-1": v2_path, "v2-1000": v2_path},
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "fastapi",
                f"async FastAPI + orjson + numpy (uvicorn --workers {workers})",
                [*uvicorn, "plain_app:app", "--port", str(port)],
                {"MODEL_PATH": str(model_file)},
                port,
                {"features": "/predict", "instances": "/predict"},
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "bare",
                f"bare ASGI, constant answer (uvicorn --workers {workers})",
                [*uvicorn, "bare_asgi:app", "--port", str(port)],
                {},
                port,
                {"features": "/predict"},
                what={"features": "`features` body (not parsed)"},
            )
        )
        port = free_port()
        peers.append(
            Peer(
                "mlflow",
                f"mlflow models serve --workers {workers}",
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
                    "--workers",
                    str(workers),
                ],
                {**principal_env("model-server"), "MLFLOW_TRACKING_URI": uri},
                port,
                {"features": "/invocations", "instances": "/invocations"},
                {"features": files["mlflow-features"], "instances": files["mlflow-instances"]},
                what={
                    "features": "/invocations dataframe_split",
                    "instances": "/invocations dataframe_split",
                },
            )
        )
        only = {k for k in args.only.split(",") if k}
        for peer in peers:
            if only and peer.key not in only:
                peer.not_measured = "not selected (--only)"
                continue
            try:
                if peer.key == "mlserver":
                    mlserver = mlserver_peer.ensure_venv()
                    extra["mlserver_versions"] = mlserver_peer.versions(mlserver)
                    repo = mlserver_peer.model_repository(
                        tmp / "mlserver-repo",
                        model_file,
                        MODEL,
                        (peer.port, free_port(), free_port()),
                        workers,
                    )
                    peer.argv = [str(mlserver), "start", str(repo)]
                    peer.env = {"PATH": f"{mlserver.parent}{os.pathsep}{os.environ['PATH']}"}
                measure(peer, files, args, lua, tmp)
            except (NotMeasured, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                peer.not_measured = f"{type(exc).__name__}: {str(exc)[:600]}"
                print(f"{peer.label}: NOT MEASURED: {peer.not_measured}", flush=True)
            finally:
                stop(peer)
    finally:
        for peer in peers:
            stop(peer)
        if tracking is not None:
            tracking.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report = render(peers, args, extra)
    print()
    print(report)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(with_notes(report, old))
    return 0


def measure(peer: Peer, files: dict[str, Path], args: argparse.Namespace, lua: Path, tmp: Path) -> None:
    """Start `peer`, run every workload it supports one after the other, read its RSS, stop it (caller)."""
    first = next(iter(peer.paths))
    start_and_wait(peer, files[first], tmp)
    print(f"{peer.label}: first prediction after {peer.cold_start_s:.2f} s", flush=True)
    for load in WORKLOADS:
        if load.body not in peer.paths:
            continue
        label = named(peer, load)
        url = f"http://127.0.0.1:{peer.port}{peer.paths[load.body]}"
        body = peer.bodies.get(load.body, files[load.body])
        try:
            # the body must be answered with a 200 before any load is measured on it
            check = httpx.post(
                url, content=body.read_bytes(), headers={"content-type": "application/json"}, timeout=30
            )
            if check.status_code != 200:
                raise RuntimeError(f"HTTP {check.status_code}: {check.text[:200]}")
            run_wrk(url, body, args.warmup_s, load.connections, lua)
            result = run_wrk(url, body, args.duration_s, load.connections, lua)
        except (subprocess.SubprocessError, RuntimeError, httpx.HTTPError) as exc:
            peer.results[load.key] = f"not measured ({type(exc).__name__}: {str(exc)[:300]})"
            print(f"{peer.label:55s} {label:45s} FAILED {exc}", flush=True)
            continue
        peer.results[load.key] = result
        print(
            f"{peer.label:55s} {label:45s} {result.rps:9.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}",
            flush=True,
        )
    assert peer.proc is not None
    peer.rss = session_rss(peer.proc.pid)
    if peer.key == "ours-log":  # read from the process that served the workloads, before the restarts below
        peer.notes.append(prediction_log_outcome(peer.port))
    for _ in range(args.cold_starts - 1):  # more cold starts, each of a fresh process on a quiet machine
        stop(peer)
        time.sleep(1)
        start_and_wait(peer, files[first], tmp)
    print(f"{peer.label}: cold starts {', '.join(f'{s:.2f}' for s in peer.cold_starts)} s", flush=True)


def prediction_log_outcome(port: int) -> str:
    """What our prediction log did during the run (from /metrics, after one flush interval): rows written
    through MLflow's artifact proxy, dropped, failed. Dropped rows would mean the log shed load."""
    time.sleep(6)  # one flush interval (5 s by default) and a margin
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        return f"prediction log: not read ({exc})"
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^modelops_prediction_log_records_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }
    return "its prediction log was on (the default), uploading through MLflow's artifact proxy: " + ", ".join(
        f"{counts.get(k, 0):,.0f} rows {k}" for k in ("written", "dropped", "failed")
    )


# (our workload, peer, peer's workload or "" for the same, text, as a percentage)
RATIOS = [
    *(
        (f"v2-{rows}-c{c}", "mlserver", "", f"ours vs MLServer, v2 {rows} row{'s' * (rows > 1)} c{c}", False)
        for rows in (1, 1000)
        for c in (8, 32)
    ),
    *(
        (f"{body}-c{c}", "fastapi", "", f"ours vs async FastAPI, /predict {rows} c{c}", False)
        for body, rows in (("features", "1 row"), ("instances", "1000 rows"))
        for c in (8, 32)
    ),
    *(
        ("features-c" + c, "bare", "", f"ours /predict as % of bare ASGI, 1 row c{c}", True)
        for c in ("8", "32")
    ),
    *(
        (f"{body}-c{c}", "mlflow", "", f"ours vs `mlflow models serve`, {rows} c{c}", False)
        for body, rows in (("features", "1 row"), ("instances", "1000 rows"))
        for c in (8, 32)
    ),
    *(
        (f"{body}-c{c}", "ours-log", "", f"ours, prediction log off vs on, {rows} c{c}", False)
        for body, rows in (("features", "/predict 1 row"), ("v2-1000", "v2 1000 rows"))
        for c in (8, 32)
    ),
    *(
        (
            f"instances-c{c}",
            "ours",
            f"v2-1000-c{c}",
            f"ours /predict instances vs ours v2, 1000 rows c{c}",
            False,
        )
        for c in (8, 32)
    ),
]


NOTES_HEADING = "\n## Notes on this run"


def with_notes(report: str, old: str) -> str:
    """The new report followed by the hand-written part of the old file (from its NOTES_HEADING on), which a
    regeneration must not erase; the notes then describe the previous run until someone edits them."""
    at = old.find(NOTES_HEADING)
    return report if at < 0 else report.rstrip("\n") + "\n" + old[at:]


def cold_text(peer: Peer) -> str:
    """`median (min-max)` of the peer's cold starts in seconds, or n/a."""
    if not peer.cold_starts:
        return "n/a"
    starts = sorted(peer.cold_starts)
    if len(starts) == 1:
        return f"{starts[0]:.2f}"
    return f"{statistics.median(starts):.2f} ({starts[0]:.2f}-{starts[-1]:.2f})"


def named(peer: Peer, load: Workload) -> str:
    """The workload's name on this server (mlflow gets the same rows in its own format)."""
    what = peer.what.get(load.body)
    return f"{what},{load.label.split(',', 1)[1]}" if what else load.label


# -- report ---------------------------------------------------------------------------------------------------
def render(peers: list[Peer], args: argparse.Namespace, extra: dict[str, object]) -> str:
    by_key = {p.key: p for p in peers}

    def get(server: str, load: str) -> Result | None:
        peer = by_key.get(server)
        value = peer.results.get(load) if peer else None
        return value if isinstance(value, Result) and value.errors == 0 else None

    def ratio(a: tuple[str, str], b: tuple[str, str], what: str, percent: bool = False) -> str:
        ours, other = get(*a), get(*b)
        if ours is None or other is None:
            return f"- {what}: not available (one side not measured or had errors)"
        value = f"{100 * ours.rps / other.rps:.0f}%" if percent else f"{ours.rps / other.rps:.2f}x"
        return (
            f"- {what}: **{value}** ({ours.rps:.0f} vs {other.rps:.0f} req/s; p99 {ours.p99_ms:.1f} vs "
            f"{other.p99_ms:.1f} ms)"
        )

    w = args.workers
    lines = [
        "# Serving benchmark",
        "",
        f"One run of `python benchmarks/serving.py --workers {w} --duration-s {args.duration_s}` on "
        f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
        "",
        f"Load: `wrk -t1 -d{args.duration_s}s` at 8 or 32 connections on 127.0.0.1, each workload after a "
        f"{args.warmup_s} s warm-up; one server under load at a time, every server with {w} worker "
        "process(es). These are SHORT runs on a machine shared with other work, and wrk competes with the server "
        "for the cores: single numbers move a lot between runs (by up to ~40% on the 2-core machine these docs were "
        "measured on), so read ratios below ~1.5x as indicative only. Model: the trainer's default (StandardScaler + "
        "LogisticRegression, 30 features), trained, signed and registered once; every server serves that same "
        "fitted model (ours from the registry, the others from a joblib copy). Ours runs twice: with its "
        "prediction log off, doing the same work as the peers (none of them records what it answers; every ratio "
        "against a peer below is from this one), and with its defaults, the log on, uploading every answered row through MLflow "
        "(what that costs).",
        "",
        "Bodies (identical bytes for every server on a workload): v2 = Open Inference Protocol JSON, one FP64 "
        'tensor `[N, 30]` asking for the `predict` output only; `/predict features` = `{"features": [...]}`, '
        '`/predict instances` = `{"instances": [[...] x 1000]}` (answers carry labels and probabilities); '
        "`mlflow models serve` gets the same rows as `dataframe_split` on /invocations; the bare ASGI app gets the "
        "`features` bytes and answers a constant.",
        "",
        "| server | workload | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for peer in peers:
        if peer.not_measured:
            continue
        for load in WORKLOADS:
            value = peer.results.get(load.key)
            if isinstance(value, Result):
                lines.append(
                    f"| {peer.label} | {named(peer, load)} | {value.rps:.1f} | {value.p50_ms:.2f} | "
                    f"{value.p99_ms:.2f} | {value.errors} |"
                )
            elif isinstance(value, str):
                lines.append(f"| {peer.label} | {named(peer, load)} | {value} | | | |")
    lines += [
        "",
        "| server | cold start to first prediction (s) | RSS after the workloads (MiB, all processes) | processes |",
        "| --- | ---: | ---: | ---: |",
    ]
    for peer in peers:
        if peer.not_measured:
            continue
        rss = f"{peer.rss[0]:.0f} | {peer.rss[1]}" if peer.rss else "not read | "
        cold = cold_text(peer)
        lines.append(f"| {peer.label} | {cold} | {rss} |")
    lines += ["", *(f"{peer.label}: {note}." for peer in peers for note in peer.notes)]
    lines += [
        "",
        "Cold start = spawn to the first 200 on a prediction request (polled every 50 ms): the median of "
        f"{args.cold_starts} starts of a fresh process (min-max in brackets), the first before the workloads, the "
        "others after them. Ours and `mlflow models serve` include resolving and downloading the model from MLflow "
        "(ours also verifies its signature); MLServer and the FastAPI app load a local joblib file.",
        "",
        "## Ratios (from this one run: same worker count, same model, same body; mlflow: the same rows as dataframe_split)",
        "",
        *(ratio(("ours", load), (peer, other or load), text, pct) for load, peer, other, text, pct in RATIOS),
    ]
    ours, ml = by_key.get("ours"), by_key.get("mlserver")
    if ours and ml and ours.cold_starts and ml.cold_starts:
        lines.append(f"- cold start (median): ours {cold_text(ours)} s vs MLServer {cold_text(ml)} s")
    missing = [p for p in peers if p.not_measured]
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- {p.label}: {p.not_measured}" for p in missing]
    lines += ["", "## Versions", ""]
    lines.append("- ours: " + ", ".join(f"{k} {v}" for k, v in our_versions().items()))
    mlv = extra.get("mlserver_versions")
    if isinstance(mlv, dict):
        lines.append("- MLServer venv: " + ", ".join(f"{k} {v}" for k, v in mlv.items()))
    lines += [
        "",
        "MLServer runs with its defaults except `parallel_workers` (0 for one process: inference in the HTTP "
        "process, as the others; N for `--workers N`) and with httptools installed (its uvicorn picks it, and "
        "uvloop, automatically). The async FastAPI app is benchmarks/plain_app.py, the bare ASGI app "
        "benchmarks/bare_asgi.py.",
        "",
        "Reproduce: `make bench` (needs `wrk`: `apt-get install wrk` / `brew install wrk`; the first run installs "
        "MLServer into ~/.cache/modelops-stack/bench-mlserver).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
