"""`modelops loadtest`: staged virtual users against a model server, with pass/fail thresholds.

Each virtual user sends one request at a time (a closed loop, like k6's VUs); a stage sets how many users run and
for how long, so `10:20s,50:20s,100:20s` ramps 10 -> 50 -> 100. Every request gets its own X-Request-Id (so a
rollout's sticky routing spreads them), and every answer is recorded with its latency, status and X-Model-Version.
The summary (per stage and overall: requests, throughput, p50/p95/p99, error rate, answers per version) is printed
as JSON or text; a breached threshold makes the exit code 3.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from modelops.errors import InvalidInput, ServerUnreachable


@dataclass(frozen=True)
class Stage:
    users: int
    duration_s: float


def parse_stages(text: str) -> list[Stage]:
    """'10:20s,50:20s' -> [Stage(10, 20), Stage(50, 20)] (durations as in `--interval`: 90, 90s, 2m)."""
    from modelops.rollout.commands import duration_s

    stages = []
    for part in text.split(","):
        users, _, duration = part.strip().partition(":")
        try:
            count = int(users)
        except ValueError:
            raise InvalidInput(
                f"stage {part!r}: users must be a whole number, e.g. 10:20s", field="stages"
            ) from None
        if not 1 <= count <= 10_000 or not duration:
            raise InvalidInput(
                f"stage {part!r}: 1 to 10000 users and a duration, e.g. 10:20s", field="stages"
            )
        stages.append(Stage(count, duration_s(duration)))
    return stages


@dataclass
class Record:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, latency_s: float, status: int | None, version: str) -> None:
        self.latencies_s.append(latency_s)
        key = str(status) if status is not None else "connection_error"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status is None or status >= 400:
            self.errors += 1
        elif version:
            self.versions[version] = self.versions.get(version, 0) + 1

    def merge(self, other: Record) -> None:
        self.latencies_s += other.latencies_s
        self.errors += other.errors
        for k, v in other.versions.items():
            self.versions[k] = self.versions.get(k, 0) + v
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        n = len(self.latencies_s)
        lat = np.asarray(self.latencies_s) * 1000
        return {
            "requests": n,
            "throughput_rps": round(n / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if n else None,
            "p95_ms": round(float(np.percentile(lat, 95)), 2) if n else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if n else None,
            "error_rate": round(self.errors / n, 5) if n else 0.0,
            "statuses": dict(sorted(self.statuses.items())),
            "versions": dict(sorted(self.versions.items())),
        }


async def _user(client: httpx.AsyncClient, path: str, body: bytes, until: float, record: Record) -> None:
    headers = {"content-type": "application/json"}
    while time.monotonic() < until:
        headers["x-request-id"] = uuid.uuid4().hex
        start = time.perf_counter()
        try:
            response = await client.post(path, content=body, headers=headers)
            status: int | None = response.status_code
            version = response.headers.get("x-model-version", "")
        except httpx.HTTPError:
            status, version = None, ""
        record.add(time.perf_counter() - start, status, version)


async def _run(url: str, path: str, body: bytes, stages: list[Stage], timeout_s: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=max(s.users for s in stages), max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        try:
            await client.get("/healthz")
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"model server at {url} is not reachable: {type(exc).__name__}") from exc
        total, per_stage = Record(), []
        started = time.monotonic()
        for stage in stages:
            record = Record()
            begin = time.monotonic()
            until = begin + stage.duration_s
            await asyncio.gather(*(_user(client, path, body, until, record) for _ in range(stage.users)))
            per_stage.append({"users": stage.users, **record.summary(time.monotonic() - begin)})
            total.merge(record)
        return {
            "url": url,
            "path": path,
            "stages": per_stage,
            "overall": total.summary(time.monotonic() - started),
        }


def run_loadtest(
    url: str,
    body: dict[str, Any],
    stages: list[Stage],
    *,
    path: str = "/predict",
    max_p95_ms: float | None = None,
    max_error_rate: float | None = None,
    timeout_s: float = 10.0,
) -> tuple[dict[str, Any], list[str]]:
    """Run the stages; returns the summary and the breached thresholds (empty: pass)."""
    summary = asyncio.run(_run(url.rstrip("/"), path, json.dumps(body).encode(), stages, timeout_s))
    overall = summary["overall"]
    breaches = []
    if max_p95_ms is not None and (overall["p95_ms"] is None or overall["p95_ms"] > max_p95_ms):
        breaches.append(f"p95 {overall['p95_ms']} ms > {max_p95_ms:g} ms")
    if max_error_rate is not None and overall["error_rate"] > max_error_rate:
        breaches.append(f"error rate {overall['error_rate']:.4%} > {max_error_rate:.4%}")
    summary["thresholds"] = {"max_p95_ms": max_p95_ms, "max_error_rate": max_error_rate, "breached": breaches}
    summary["passed"] = not breaches
    return summary, breaches


def add_loadtest(sub: Any) -> None:
    """`modelops loadtest` on the command line."""
    from modelops.cli import _add_home

    p = sub.add_parser("loadtest", help="staged load against a model server, with pass/fail thresholds")
    _add_home(p)
    p.add_argument("--url", default=None, help="model server URL [the local stack's, else :8000]")
    p.add_argument(
        "--stages", default="10:20s,50:20s,100:20s", help="users:duration,... [10:20s,50:20s,100:20s]"
    )
    p.add_argument(
        "--features", default=None, help="the row to send: '1.0,2.0,...' [the model's input example]"
    )
    p.add_argument("--max-p95-ms", type=float, default=None, help="fail (exit 3) above this p95 latency")
    p.add_argument(
        "--max-error-rate", type=float, default=None, help="fail (exit 3) above this share of errors"
    )
    p.add_argument("--timeout", default="10s", help="per-request timeout [10s]")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_loadtest)


def _cmd_loadtest(args: Any) -> int:
    from modelops.cli import _server_url
    from modelops.errors import EXIT_UNHEALTHY
    from modelops.local import client
    from modelops.rollout.commands import duration_s

    url = _server_url(args)
    stages = parse_stages(args.stages)
    body = client.prediction_body(url, args.features, None)
    summary, breaches = run_loadtest(
        url,
        body,
        stages,
        max_p95_ms=args.max_p95_ms,
        max_error_rate=args.max_error_rate,
        timeout_s=duration_s(args.timeout),
    )
    if args.output == "json":
        print(json.dumps(summary, indent=2))
    else:
        for stage in [*summary["stages"], {"users": "all", **summary["overall"]}]:
            print(
                f"users {stage['users']:>5}: {stage['requests']:>7} requests, {stage['throughput_rps']:>8} req/s, "
                f"p50 {stage['p50_ms']} ms, p95 {stage['p95_ms']} ms, p99 {stage['p99_ms']} ms, "
                f"errors {stage['error_rate']:.2%}, versions {stage['versions']}"
            )
        print("PASS" if not breaches else "FAIL: " + "; ".join(breaches))
    return EXIT_UNHEALTHY if breaches else 0
