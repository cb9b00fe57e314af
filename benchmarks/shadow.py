"""What a 100% shadow rollout costs the champion, and whether a stalled challenger ever delays it.

One model server (1 worker) with two signed versions: v1 the champion, v2 the challenger. An open-loop load at a
fixed rate (requests are sent on schedule, whatever the answers do, so a slow server cannot hide its latency by
slowing the client down) of single-row /predict bodies, from a separate process over loopback. Alternating rounds:
- "no rollout": only the champion;
- "shadow 100%": a shadow rollout of v2 at 100% (every request copied to the challenger after the answer);
- "stalled challenger": a second server whose challenger predictions each stall 10 s (fault injection,
  MODELOPS_FAULT_CHALLENGER_DELAY_MS=10000, challenger timeout 15 s), shadow at 100%.
The champion's p50/p99 are measured by the client; the copies compared / dropped / timed out from /metrics.
No controller runs: the rollout stays at its step for the whole measurement. Also reported: the server's CPU time per
request (all its processes, the shadow worker included), a cost measure steadier than a tail latency.

    python benchmarks/shadow.py [--rate 300] [--duration-s 10] [--rounds 3] [--modes none,shadow,stalled]
                                [--write docs/shadow.md] [--raw every-latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.support import VENV_BIN, free_port, mlflow_server, principal_env, serve_argv  # noqa: E402

from serving import (  # noqa: E402
    MODEL,
    Peer,
    bodies,
    machine,
    session_cpu_s,
    start_and_wait,
    stop,
)

TOKEN = "benchmark-admin-token-0123456789abcdef"
# With two or more cores, the server runs on the first and the load client on the others: on a small machine the two
# otherwise take turns on the same cores, and the client's scheduling shows up as the server's tail latency.
CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS, CLIENT_CPUS = ({CPUS[0]}, set(CPUS[1:])) if len(CPUS) >= 2 else (set(CPUS), set(CPUS))


def pinned(argv: list[str], cpus: set[int]) -> list[str]:
    """`argv` run on `cpus` only (its threads and children inherit the affinity)."""
    pin = "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
    pin += "os.execv(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", pin, ",".join(map(str, sorted(cpus))), *argv]


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def open_loop(
    url: str, body: bytes, rate: float, duration_s: float, connections: int = 32
) -> dict[str, float]:
    """Send `rate` requests per second for `duration_s` on a fixed schedule over `connections` keep-alive
    connections (plain HTTP/1.1 on asyncio streams: a few tens of microseconds of client work per request, so the
    client is never the bottleneck); latency counts from the scheduled send time, so a request that waits for a
    free connection because the server is slow counts against the server."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()
    queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while (item := await queue.get()) is not None:
                due, i = item
                writer.write(head + f"X-Request-Id: bench-{i}\r\n\r\n".encode() + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if status == 200:
                    latencies.append(time.perf_counter() - due)
                else:
                    errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter()
    total = int(rate * duration_s)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, i))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {
        "sent": total,
        "ok": len(latencies),
        "errors": errors,
        "achieved_rps": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "latencies_ms": [round(x * 1000, 4) for x in latencies],
    }


def measure(url: str, body: Path, rate: float, duration_s: float) -> dict[str, float]:
    """The load from its own process (the client's own work must not share a GIL with this script)."""
    code = (
        "import asyncio, json, os, sys; sys.path.insert(0, sys.argv[1]); from shadow import open_loop; "
        f"os.sched_setaffinity(0, {CLIENT_CPUS!r}); "
        "print(json.dumps(asyncio.run(open_loop(sys.argv[2], open(sys.argv[3], 'rb').read(), "
        "float(sys.argv[4]), float(sys.argv[5])))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks"), url, str(body), str(rate), str(duration_s)],
        capture_output=True,
        text=True,
        timeout=duration_s * 4 + 60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def shadow_counts(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("modelops_shadow_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def rollout(url: str, action: str) -> None:
    body = (
        {"version": "2", "mode": "shadow", "steps": [100], "interval_s": 86_400} if action == "start" else {}
    )
    response = httpx.post(f"{url}/rollout/{action}", json=body, headers=AUTH, timeout=60)
    response.raise_for_status()
    if action == "start":  # the server's follower loads the challenger in the background
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/rollout", timeout=10).json().get("challenger_loaded") != "2":
            if time.monotonic() > deadline:
                raise RuntimeError(f"challenger not loaded after 60 s: {httpx.get(f'{url}/rollout').text}")
            time.sleep(0.2)


def warm_up_worker(url: str, body: Path, rate: float, deadline_s: float = 120) -> None:
    """Load until the challenger has compared copies: a shadow rollout's worker process starts (imports, verifies
    and loads the challenger, at the lowest priority) when the first copies arrive, a one-off of a rollout that
    lasts minutes or hours, not what the rounds measure."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        before = shadow_counts(url).get("compared", 0)
        measure(f"{url}/predict", body, rate, 3)
        if shadow_counts(url).get("compared", 0) > before:
            return
    raise RuntimeError(f"no shadow copy compared after {deadline_s:g} s of load")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--raw", type=Path, help="also write every round's results (with latencies) as JSON")
    parser.add_argument(
        "--modes",
        default="none,shadow,stalled",
        help="which modes to measure (comma-separated; 'none' is needed)",
    )
    args = parser.parse_args()
    modes = [m for m in ("none", "shadow", "stalled") if m in args.modes.split(",")]
    if "none" not in modes:
        parser.error("--modes must include none (the baseline)")

    from sklearn.datasets import load_breast_cancer

    from modelops.serving.service import INPUT_NAME
    from modelops.signing import generate_keypair

    tmp = Path(tempfile.mkdtemp(prefix="modelops-shadow-"))
    tracking = mlflow_server(tmp / "mlflow").start()
    results: dict[str, list[dict[str, float]]] = {"none": [], "shadow": [], "stalled": []}
    copies: dict[str, list[dict[str, float]]] = {"shadow": [], "stalled": []}
    servers: list[Peer] = []
    try:
        private, public = tmp / "signing-key.pem", tmp / "signing-public.pem"
        generate_keypair(private, public)
        trainer = {**principal_env("trainer"), "MODELOPS_SIGNING_KEY_PATH": str(private)}
        # Each server follows its own registered model: a rollout is registry state, and a server following the
        # other's rollout would shadow (and load a challenger) in rounds meant to have none.
        names = {"healthy": MODEL, "stalled": f"{MODEL}Stalled"}
        for name in names.values():
            tracking.grant(name)
            # v1 becomes the champion (no champion yet), v2 (another seed) is the challenger
            for extra in ([], ["--promote", "never", "--seed", "7"]):
                subprocess.run(
                    [
                        str(VENV_BIN / "modelops"),
                        "train",
                        "--tracking-uri",
                        tracking.uri,
                        "--model-name",
                        name,
                        *extra,
                    ],
                    env={**os.environ, **trainer},
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
        data = load_breast_cancer(as_frame=True)
        files = bodies(tmp, data.data.to_numpy().tolist(), list(data.data.columns), INPUT_NAME)
        base_env = {
            **principal_env("model-server"),
            "MLFLOW_TRACKING_URI": tracking.uri,
            "MODELOPS_SIGNING_PUBLIC_KEY_PATH": str(public),
            "MODELOPS_ADMIN_TOKEN": TOKEN,
            "MODELOPS_REGISTRY_WRITE_USERNAME": "operator",
            "MODELOPS_REGISTRY_WRITE_PASSWORD": principal_env("operator")["MLFLOW_TRACKING_PASSWORD"],
            "MODELOPS_PREDICTION_LOG_SAMPLE_RATE": "0",
        }
        stalled_env = {
            **base_env,
            "MODELOPS_FAULT_CHALLENGER_DELAY_MS": "10000",
            "MODELOPS_CHALLENGER_TIMEOUT_MS": "15000",
        }
        urls: dict[str, str] = {}
        sessions: dict[str, int] = {}  # url -> the server's session id (each starts its own session)
        for key, env in (("healthy", base_env), ("stalled", stalled_env)):
            if key == "stalled" and "stalled" not in modes:
                continue
            env = {**env, "MODELOPS_MODEL_NAME": names[key]}
            port = free_port()
            server = Peer(
                key, key, pinned(serve_argv(port, 1), SERVER_CPUS), env, port, {"features": "/predict"}
            )
            start_and_wait(server, files["features"], tmp)
            servers.append(server)
            urls[key] = f"http://127.0.0.1:{port}"
            assert server.proc is not None
            sessions[urls[key]] = server.proc.pid
            measure(f"{urls[key]}/predict", files["features"], args.rate, 3)  # warm-up, not counted
        for round_no in range(args.rounds):
            for mode in modes:
                url = urls["stalled" if mode == "stalled" else "healthy"]
                if mode != "none":
                    rollout(url, "start")
                    warm_up_worker(url, files["features"], args.rate)
                    before = shadow_counts(url)
                cpu_before = session_cpu_s(sessions[url])
                result = measure(f"{url}/predict", files["features"], args.rate, args.duration_s)
                # the server's CPU time per answered request (every process of the server, whatever it did):
                # a cost measure far steadier than a tail latency on a shared machine
                result["cpu_us"] = (session_cpu_s(sessions[url]) - cpu_before) / max(result["ok"], 1) * 1e6
                results[mode].append(result)
                if mode != "none":
                    time.sleep(1)  # let the last copies of the round finish (or stall) before counting
                    after = shadow_counts(url)
                    copies[mode].append({k: after.get(k, 0) - before.get(k, 0) for k in after})
                    rollout(url, "abort")
                shown = {k: round(v, 2) for k, v in result.items() if k != "latencies_ms"}
                print(
                    f"round {round_no + 1} {mode} (ended {time.time():.1f}): {shown} {copies.get(mode, [{}])[-1:]}",
                    flush=True,
                )
    finally:
        for server in servers:
            stop(server)
        tracking.stop()

    if args.raw:
        args.raw.write_text(json.dumps({"results": results, "copies": copies}))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    def pooled(mode: str, q: int) -> float:
        """The q-th percentile of every request of every round of `mode` (rounds of equal length)."""
        every = sorted(x for r in results[mode] for x in r["latencies_ms"])
        return statistics.quantiles(every, n=100, method="inclusive")[q - 1]

    def paired(mode: str, key: str = "p99_ms") -> float:
        """The median over rounds of `key`'s change against the same round's no-rollout value."""
        return statistics.median(
            (r[key] - base[key]) / base[key] for r, base in zip(results[mode], results["none"], strict=True)
        )

    base99 = pooled("none", 99)
    lines = [
        "# Shadow rollout: what it costs the champion",
        "",
        f"Measured with `python benchmarks/shadow.py --rate {args.rate:g} --duration-s {args.duration_s:g} "
        f"--rounds {args.rounds} --modes {','.join(modes)}` on {machine()}, {time.strftime('%Y-%m-%d')}. One model "
        f"server worker, single-row `/predict`, an open-loop load of {args.rate:g} requests/s from a separate "
        "process (latency counted from each request's scheduled send time), rounds alternating between the modes. "
        "p50 and p99 are over every request of every round of a mode (pooled); the paired change is the median "
        "over rounds of each round's p99 against the no-rollout round just before it. Server CPU is the user and "
        "system time of the server's processes over a round divided by the requests it answered (median over "
        "rounds): a cost measure much steadier than a tail latency on a shared machine. With two or more cores the "
        "server runs on the first and the load client on the others; each server follows its own registered "
        "model; before each shadow round, load runs until the challenger's worker process has compared copies "
        "(its start is a one-off of a rollout, not what the rounds measure).",
        "",
        "| mode | answered req/s | errors | champion p50 ms | champion p99 ms | p99 vs no rollout (pooled) "
        "| p99 change (paired, median) | max ms | server CPU µs per request | CPU change (paired, median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "none": "no rollout",
        "shadow": "shadow 100% (healthy challenger)",
        "stalled": "shadow 100%, challenger stalled 10 s per copy",
    }
    for mode, label in labels.items():
        if mode not in modes:
            continue
        p99 = pooled(mode, 99)
        change = "-" if mode == "none" else f"{(p99 - base99) / base99:+.1%}"
        pair = "-" if mode == "none" else f"{paired(mode):+.1%}"
        cpu_pair = "-" if mode == "none" else f"{paired(mode, 'cpu_us'):+.1%}"
        lines.append(
            f"| {label} | {med(mode, 'achieved_rps'):,.0f} | {sum(r['errors'] for r in results[mode]):.0f} | "
            f"{pooled(mode, 50):.2f} | {p99:.2f} | {change} | {pair} | "
            f"{max(r['max_ms'] for r in results[mode]):.1f} | {med(mode, 'cpu_us'):.0f} | {cpu_pair} |"
        )
    lines += [
        "",
        "p99 per round, ms:",
        "",
        "| mode | " + " | ".join(str(i + 1) for i in range(args.rounds)) + " |",
    ]
    lines.append("|---|" + "---|" * args.rounds)
    for mode in modes:
        lines.append(f"| {labels[mode]} | " + " | ".join(f"{r['p99_ms']:.2f}" for r in results[mode]) + " |")
    lines += ["", "Copies sent to the challenger per round (from `modelops_shadow_requests_total`):", ""]
    lines += ["| mode | compared | dropped | timeout | error |", "|---|---|---|---|---|"]
    for mode in ("shadow", "stalled"):
        for c in copies.get(mode, []):
            lines.append(
                f"| {labels[mode]} | {c.get('compared', 0):,.0f} | {c.get('dropped', 0):,.0f} | "
                f"{c.get('timeout', 0):,.0f} | {c.get('error', 0):,.0f} |"
            )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
