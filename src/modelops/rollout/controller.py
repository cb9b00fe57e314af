"""The rollout controller: reads the running rollout from the registry, measures its current step and decides.

One process drives rollouts (`modelops controller`: a one-replica Deployment in the chart, a child of `modelops up`
locally). It holds no state of its own: the step, its start and every decision are in the registry, so a restarted
controller (or replica) goes on at the same step; its measurement window then restarts. The measurements come from
the replicas' own /metrics (differences between scrapes, summed over replicas) or, when configured, Prometheus.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from modelops.errors import ConfigError, ModelOpsError, RolloutConflict
from modelops.monitoring.retrain import DriftWatch, scrape_texts
from modelops.rollout.analysis import (
    LATENCY,
    REQUESTS,
    SCORES,
    SHADOW_ABS_DELTA,
    SHADOW_REQUESTS,
    SHADOW_ROWS,
    Key,
    Thresholds,
    Verdict,
    analyze,
    difference,
    parse_metrics,
    shadow_summary,
    total,
)
from modelops.rollout.manage import Rollouts
from modelops.rollout.state import RolloutState
from modelops.settings import ControllerSettings

log = logging.getLogger(__name__)


class MetricsSource(Protocol):
    def window(self, key: tuple[str, int], since: float) -> dict[Key, float] | None:
        """Counts of the rollout's series since the step `key` began (None: the window starts now)."""


class ReplicaScraper:
    """Reads every replica's /metrics; the window is the sum over replicas of the increase since the step began."""

    def __init__(self, targets: list[str], dns: str | None = None, timeout_s: float = 5.0) -> None:
        self.targets = targets
        self.dns = dns
        self.timeout_s = timeout_s
        self._baseline: tuple[tuple[str, int], dict[str, dict[Key, float]]] | None = None

    def replicas(self) -> list[str]:
        """The replicas' base URLs: the fixed list, or every address a headless Service name resolves to."""
        if not self.dns:
            return list(self.targets)
        host, _, port = self.dns.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (
            OSError
        ) as exc:  # no ready replica (a headless Service without endpoints has no record) or no DNS
            log.warning("cannot resolve the replicas at %s: %s", self.dns, exc)
            return []
        addresses = {str(info[4][0]) for info in infos}
        return sorted(f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses)

    def scrape(self) -> dict[str, dict[Key, float]]:
        out = {}
        for base in self.replicas():
            try:
                response = httpx.get(base.rstrip("/") + "/metrics", timeout=self.timeout_s)
                response.raise_for_status()
            except httpx.HTTPError as exc:  # a replica that is down counts nothing this tick
                log.warning("cannot read %s/metrics: %s", _host(base), type(exc).__name__)
                continue
            out[base] = parse_metrics(response.text)
        return out

    def window(self, key: tuple[str, int], since: float) -> dict[Key, float] | None:
        scrapes = self.scrape()
        if self._baseline is None or self._baseline[0] != key:
            self._baseline = (key, scrapes)
            return None
        before = self._baseline[1]
        return total(difference(now, before.get(base, {})) for base, now in scrapes.items())


class PrometheusSource:
    """Asks Prometheus for the increase of the rollout's series since the step began."""

    QUERIES: Mapping[str, str] = {
        REQUESTS: "sum by (version, outcome) (increase(modelops_version_requests_total[{w}s]))",
        LATENCY: "sum by (version, le) (increase(modelops_version_predict_duration_seconds_bucket[{w}s]))",
        SCORES: "sum by (version, bin) (increase(modelops_version_score_rows_total[{w}s]))",
        SHADOW_REQUESTS: "sum by (outcome) (increase(modelops_shadow_requests_total[{w}s]))",
        SHADOW_ROWS: "sum by (agreement) (increase(modelops_shadow_rows_total[{w}s]))",
        SHADOW_ABS_DELTA: "sum(increase(modelops_shadow_abs_delta_p_total[{w}s]))",
    }
    SUB = {
        REQUESTS: "outcome",
        LATENCY: "le",
        SCORES: "bin",
        SHADOW_REQUESTS: "outcome",
        SHADOW_ROWS: "agreement",
    }

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/api/v1/query"
        self.timeout_s = timeout_s

    def window(self, key: tuple[str, int], since: float) -> dict[Key, float] | None:
        seconds = int(time.time() - since)
        if seconds < 15:  # shorter than a scrape interval or two: nothing to compare yet
            return None
        out: dict[Key, float] = {}
        for series, query in self.QUERIES.items():
            response = httpx.get(self.url, params={"query": query.format(w=seconds)}, timeout=self.timeout_s)
            response.raise_for_status()
            sub = self.SUB.get(series, "")
            for item in response.json()["data"]["result"]:
                labels = item["metric"]
                out[(series, labels.get("version", ""), labels.get(sub, "") if sub else "")] = float(
                    item["value"][1]
                )
        return out


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


class Controller:
    """Decides the running rollout's current step from the measurements: abort on a failed check at any time;
    at the end of the step, on to the next (or promote after the last) when it passed, or run it again when it
    saw too little traffic."""

    def __init__(
        self,
        rollouts: Rollouts,
        source: MetricsSource,
        limits: Thresholds,
        watch: DriftWatch | None = None,
        replicas: ReplicaScraper | None = None,
    ) -> None:
        self.rollouts = rollouts
        self.source = source
        self.limits = limits
        # drift-triggered retraining: its own scrape of the replicas (also without a rollout, and in Prometheus mode)
        self.watch = watch
        self.replicas = replicas
        self.last_verdict: Verdict | None = None
        self.last_tick_at = time.monotonic()

    @classmethod
    def from_settings(cls, settings: ControllerSettings, rollouts: Rollouts) -> Controller:
        targets = [t.strip() for t in settings.controller_targets.split(",") if t.strip()]
        replicas = ReplicaScraper(targets, settings.controller_targets_dns)
        source: MetricsSource = (
            PrometheusSource(settings.controller_prometheus_url)
            if settings.controller_prometheus_url
            else replicas
        )
        watch = None
        if settings.retrain_on_drift:
            try:
                watch = DriftWatch.from_settings(settings, rollouts.champion)
            except ConfigError as exc:  # e.g. the local launcher without the stack's home
                log.warning("drift-triggered retraining is off: %s", exc.message)
        # the drift watch gets its own scraper: the rollout's keeps a per-step baseline
        scraper = ReplicaScraper(targets, settings.controller_targets_dns)
        return cls(rollouts, source, Thresholds.from_settings(settings), watch=watch, replicas=scraper)

    def watch_drift(self, now: float) -> None:
        """One drift check when due (it never raises: rollouts go on whatever happens here)."""
        if self.watch is None or self.replicas is None or not self.watch.due(now):
            return
        try:
            self.watch.tick(now, scrape_texts(self.replicas.replicas()))
        except Exception:
            log.exception("drift watch failed")

    def tick(self, now: float | None = None) -> RolloutState | None:
        """One look at the rollout; returns the state after any decision (None without a running rollout)."""
        state = self.rollouts.current()
        if state is None or not state.running:
            return state
        now = time.time() if now is None else now
        window = self.source.window((state.id, state.step), state.step_started_at)
        if window is None:
            return state
        verdict = analyze(window, state.champion_version or "", state.version, self.limits)
        self.last_verdict = verdict
        where = f"step {state.step + 1}/{len(state.steps)} ({state.percent}%)"
        state = replace(
            state,
            analysis=verdict.numbers,
            shadow=shadow_summary(window) if state.mode == "shadow" else None,
        )
        if verdict.outcome == "fail":
            return self.rollouts.abort(f"{where}: {verdict.reason}", expect=state)
        if now < state.step_started_at + state.interval_s:
            return state
        if verdict.outcome == "wait":
            return self.rollouts.extend(state, f"{where}: {verdict.reason}", now)
        if state.step + 1 >= len(state.steps):
            return self.rollouts.promote(f"{where} passed: {verdict.reason}", expect=state)
        return self.rollouts.advance(state, f"{where} passed: {verdict.reason}", now)

    def run(self, tick_s: float, stop: threading.Event) -> None:
        """Tick until `stop` is set; errors are logged and the next tick tries again."""
        log.info("rollout controller started (every %.1f s)", tick_s)
        while not stop.is_set():
            self.last_tick_at = time.monotonic()
            try:
                self.tick()
            except RolloutConflict as exc:
                log.info("rollout changed while deciding: %s", exc.message)
            except ModelOpsError as exc:
                log.warning("rollout controller: %s", exc.message)
            except Exception:
                log.exception("rollout controller tick failed")
            self.watch_drift(time.time())
            stop.wait(tick_s)


def serve_health(controller: Controller, host: str, port: int, tick_s: float) -> threading.Thread:
    """/healthz answers 200 while the controller's loop turns (its last tick recent), 503 otherwise."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    limit_s = tick_s * 3 + 60  # a tick may wait on a slow registry call (30 s timeout)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            alive = time.monotonic() - controller.last_tick_at < limit_s
            ok = self.path == "/healthz" and alive
            body = b'{"status": "alive"}' if ok else b'{"status": "stalled"}'
            self.send_response(200 if ok else (404 if self.path != "/healthz" else 503))
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not logged
            return

    server = ThreadingHTTPServer((host, port), Health)
    thread = threading.Thread(target=server.serve_forever, name="controller-health", daemon=True)
    thread.start()
    log.info("controller health on http://%s:%d/healthz", host, port)
    return thread
