"""The Live page's numbers, from the server's own metrics (no Prometheus server needed): a bounded ring of
samples of the per-version counters, turned into throughput, p50/p99 latency and error ratio per version,
and drawn as small inline SVG charts. Also the last answered predictions, from the service's listener hook."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

REQUESTS = "modelops_version_requests"
LATENCY = "modelops_version_predict_duration_seconds"
SAMPLE_INTERVAL_S = 5.0
SAMPLES = 61  # five minutes of 5 s steps
RECENT = 30
MAX_VERSIONS = 6  # series drawn; more would not be readable in a small chart


@dataclass
class VersionCounters:
    """Cumulative counters of one version at one instant."""

    ok: float = 0.0
    error: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


@dataclass(frozen=True)
class Sample:
    at: float
    versions: dict[str, VersionCounters]


def parse_metrics(text: str) -> dict[str, VersionCounters]:
    """The per-version counters of an exposition text (other metrics are skipped)."""
    found: dict[str, VersionCounters] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith((REQUESTS, LATENCY)):
            continue
        for sample in family.samples:  # by sample name: families are named with or without _total
            version = sample.labels.get("version")
            if not version:
                continue
            counters = found.setdefault(version, VersionCounters())
            if sample.name == REQUESTS + "_total":
                if sample.labels.get("outcome") == "error":
                    counters.error += sample.value
                else:
                    counters.ok += sample.value
            elif sample.name == LATENCY + "_bucket":
                le = float(sample.labels.get("le", "+Inf"))
                counters.buckets[le] = counters.buckets.get(le, 0.0) + sample.value
    return found


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative `buckets` (le -> count); None without observations."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # above the highest finite bucket: its bound is the best we know
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


@dataclass(frozen=True)
class Point:
    """What one version did between two samples."""

    at: float
    rps: float
    p50_s: float | None
    p99_s: float | None
    error_ratio: float | None
    requests: float


def between(old: VersionCounters | None, new: VersionCounters, seconds: float) -> Point | None:
    """The rates of one version from `old` to `new` (a restarted worker's counters count from zero)."""
    if seconds <= 0:
        return None
    old = old or VersionCounters()
    ok = max(new.ok - old.ok, 0.0)
    errors = max(new.error - old.error, 0.0)
    if new.ok < old.ok or new.error < old.error:  # counters reset: what is there now happened since
        ok, errors = new.ok, new.error
    buckets = {le: max(count - old.buckets.get(le, 0.0), 0.0) for le, count in new.buckets.items()}
    total = ok + errors
    return Point(
        at=0.0,
        rps=total / seconds,
        p50_s=quantile(0.5, buckets),
        p99_s=quantile(0.99, buckets),
        error_ratio=errors / total if total else None,
        requests=total,
    )


class Sampler:
    """Samples the per-version counters every `interval_s` into a ring of `size` samples (in memory, per
    worker; the counters themselves are merged over workers by `render`)."""

    def __init__(
        self,
        render: Callable[[], bytes],
        interval_s: float = SAMPLE_INTERVAL_S,
        size: int = SAMPLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.render = render
        self.interval_s = interval_s
        self.samples: deque[Sample] = deque(maxlen=size)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        try:
            text = self.render().decode("utf-8", "replace")
            self.samples.append(Sample(self.clock(), parse_metrics(text)))
        except Exception:  # a chart must never take the page (or the server) down
            log.exception("console: sampling the metrics failed")

    def sample_if_due(self) -> None:
        """Take a sample when the last is older than the interval (when no background task runs, e.g. in
        an app without lifespan)."""
        if not self.samples or self.clock() - self.samples[-1].at >= self.interval_s * 0.9:
            self.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="console-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def series(self) -> dict[str, list[Point]]:
        """Per version (most requests first, at most MAX_VERSIONS), its points between consecutive samples."""
        samples = list(self.samples)
        out: dict[str, list[Point]] = {}
        for old, new in itertools.pairwise(samples):
            for version, counters in new.versions.items():
                point = between(old.versions.get(version), counters, new.at - old.at)
                if point is not None:
                    out.setdefault(version, []).append(
                        Point(new.at, point.rps, point.p50_s, point.p99_s, point.error_ratio, point.requests)
                    )
        busiest = sorted(out, key=lambda v: -sum(p.requests for p in out[v]))[:MAX_VERSIONS]
        return {v: out[v] for v in sorted(busiest, key=_version_key)}

    def summary(self, window_s: float = 60.0) -> list[dict[str, Any]]:
        """Per version, its numbers over the last `window_s` seconds (or as much as has been sampled)."""
        if len(self.samples) < 2:
            return []
        newest = self.samples[-1]
        oldest = next((s for s in self.samples if newest.at - s.at <= window_s), self.samples[0])
        if oldest is newest:
            oldest = self.samples[-2]
        rows = []
        for version, counters in sorted(newest.versions.items(), key=lambda kv: _version_key(kv[0])):
            point = between(oldest.versions.get(version), counters, newest.at - oldest.at)
            if point is None:
                continue
            rows.append(
                {
                    "version": version,
                    "rps": point.rps,
                    "p50_ms": None if point.p50_s is None else point.p50_s * 1000,
                    "p99_ms": None if point.p99_s is None else point.p99_s * 1000,
                    "error_ratio": point.error_ratio,
                    "requests": int(point.requests),
                    "seconds": newest.at - oldest.at,
                }
            )
        return rows


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (0, version)


# -- charts --------------------------------------------------------------------------------------------
CHART_W, CHART_H, PAD_L, PAD_B, PAD_T = 320, 120, 44, 18, 8


def _ticks(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def chart(
    title: str, unit: str, series: dict[str, list[tuple[float, float]]], now: float, span_s: float
) -> dict[str, Any]:
    """An SVG line chart's geometry (drawn by the template): one polyline per version, x = time over the
    last `span_s` seconds, y from 0 to the largest value."""
    values = [y for points in series.values() for _, y in points]
    top = max(values) if values else 0.0
    top = top * 1.1 if top > 0 else 1.0
    plot_w, plot_h = CHART_W - PAD_L - 4, CHART_H - PAD_B - PAD_T
    lines = []
    for index, (version, points) in enumerate(series.items()):
        coords = []
        for at, y in points:
            x = PAD_L + plot_w * (1 - min(max(now - at, 0.0), span_s) / span_s)
            coords.append(f"{x:.1f},{PAD_T + plot_h * (1 - y / top):.1f}")
        if coords:
            # the newest point is drawn as a dot too: a series of one point has no line to see
            last_x, last_y = coords[-1].split(",")
            lines.append(
                {
                    "version": version,
                    "points": " ".join(coords),
                    "index": index % MAX_VERSIONS,
                    "last_x": last_x,
                    "last_y": last_y,
                }
            )
    return {
        "title": title,
        "unit": unit,
        "width": CHART_W,
        "height": CHART_H,
        "left": PAD_L,
        "right": CHART_W - 4,
        "top_y": PAD_T,
        "bottom_y": CHART_H - PAD_B,
        "top_label": _ticks(top),
        "span_label": f"-{span_s / 60:.0f} min" if span_s >= 60 else f"-{span_s:.0f} s",
        "lines": lines,
        "empty": not lines,
    }


def charts(sampler: Sampler) -> list[dict[str, Any]]:
    """The four charts of the Live page."""
    series = sampler.series()
    now = sampler.samples[-1].at if sampler.samples else sampler.clock()
    span = max(sampler.interval_s * ((sampler.samples.maxlen or SAMPLES) - 1), 1.0)

    def pick(
        get: Callable[[Point], float | None], scale: float = 1.0
    ) -> dict[str, list[tuple[float, float]]]:
        return {
            v: [(p.at, value * scale) for p in points if (value := get(p)) is not None]
            for v, points in series.items()
        }

    return [
        chart("Throughput", "requests/s", pick(lambda p: p.rps), now, span),
        chart("Latency p50", "ms", pick(lambda p: p.p50_s, 1000), now, span),
        chart("Latency p99", "ms", pick(lambda p: p.p99_s, 1000), now, span),
        chart("Error ratio", "share", pick(lambda p: p.error_ratio), now, span),
    ]


# -- recent predictions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recent:
    at: float
    version: str
    label: str
    probability: float | None
    rows: int


class RecentPredictions:
    """The last RECENT answered requests of this worker (first row's label and its probability)."""

    def __init__(self, size: int = RECENT) -> None:
        self.items: deque[Recent] = deque(maxlen=size)

    def __call__(self, event: Any) -> None:
        # Called on the event loop after every prediction: a few scalar reads and one append.
        prediction = event.prediction
        label = prediction.labels[0]
        probability = None
        if prediction.probabilities is not None and len(prediction.probabilities):
            probability = float(prediction.probabilities[0].max())
        value = label.item() if hasattr(label, "item") else label
        self.items.append(Recent(event.at, event.model.version, str(value), probability, len(event.rows)))

    def newest_first(self) -> list[Recent]:
        return list(reversed(self.items))
