"""Rollout analysis: compare the challenger with the champion over a step's window.

The inputs are the model servers' own per-version Prometheus series (serving/metrics.py), read either from each
replica's /metrics (differences between two scrapes, summed over replicas) or from Prometheus. Three checks, each
enough to fail a step:
- error ratio: the challenger's errors (its own failures and timeouts, answered by the champion) over its requests;
- p99 latency, from the per-version histogram the way Prometheus' histogram_quantile reads it;
- the predicted-probability distribution: PSI of the challenger's scores against the champion's over the same
  window, less the PSI two samples of the same distribution show by chance (so small windows are not flagged);
  this catches a model that answers 200 with nonsense (e.g. always the same class).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelops.settings import RolloutSettings

# (series, version, sub-label) -> value; sub-label: outcome, `le` or score bin
Key = tuple[str, str, str]
REQUESTS = "modelops_version_requests_total"
LATENCY = "modelops_version_predict_duration_seconds_bucket"
SCORES = "modelops_version_score_rows_total"
SHADOW_REQUESTS = "modelops_shadow_requests_total"
SHADOW_ROWS = "modelops_shadow_rows_total"
SHADOW_ABS_DELTA = "modelops_shadow_abs_delta_p_total"
SERIES = {
    REQUESTS: "outcome",
    LATENCY: "le",
    SCORES: "bin",
    SHADOW_REQUESTS: "outcome",
    SHADOW_ROWS: "agreement",
    SHADOW_ABS_DELTA: "",
}


def parse_metrics(text: str) -> dict[Key, float]:
    """The rollout's series in one exposition text."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sub = SERIES.get(sample.name)
            if sub is None:
                continue
            key = (sample.name, sample.labels.get("version", ""), sample.labels.get(sub, "") if sub else "")
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def difference(now: Mapping[Key, float], before: Mapping[Key, float]) -> dict[Key, float]:
    """Counter increases between two scrapes of one replica; a series that went down restarted (counts from 0)."""
    out: dict[Key, float] = {}
    for key, value in now.items():
        earlier = before.get(key, 0.0)
        out[key] = value - earlier if value >= earlier else value
    return out


def total(parts: Iterable[Mapping[Key, float]]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0.0) + value
    return out


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic in a window."""

    ok: float
    errors: float
    latency_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    score_bins: tuple[float, ...]

    @classmethod
    def of(cls, window: Mapping[Key, float], version: str) -> VersionWindow:
        buckets = sorted(
            (float(le), count) for (name, v, le), count in window.items() if name == LATENCY and v == version
        )
        bins: dict[int, float] = {}
        for (name, v, b), count in window.items():
            if name == SCORES and v == version and b.isdigit():
                bins[int(b)] = bins.get(int(b), 0.0) + count
        size = max(bins, default=-1) + 1
        return cls(
            ok=window.get((REQUESTS, version, "ok"), 0.0),
            errors=window.get((REQUESTS, version, "error"), 0.0),
            latency_buckets=tuple(buckets),
            score_bins=tuple(bins.get(i, 0.0) for i in range(size)),
        )

    @property
    def requests(self) -> float:
        return self.ok + self.errors

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Latency quantile in seconds, interpolated inside its bucket (as Prometheus does); None: no data."""
        if not self.latency_buckets or self.latency_buckets[-1][1] <= 0:
            return None
        rank = q * self.latency_buckets[-1][1]
        lower, below = 0.0, 0.0
        for upper, count in self.latency_buckets:
            if count >= rank:
                if math.isinf(upper):
                    return lower  # above the highest finite bucket: its bound is all we know
                return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
            lower, below = upper, count
        return lower


def psi(expected: tuple[float, ...], actual: tuple[float, ...]) -> float | None:
    """Population stability index of `actual` against `expected` bin counts, minus its expected value for two
    samples of one distribution ((k - 1)(1/n1 + 1/n2) for k occupied bins); None without data on both sides."""
    size = max(len(expected), len(actual))
    e = [*expected, *[0.0] * (size - len(expected))]
    a = [*actual, *[0.0] * (size - len(actual))]
    n1, n2 = sum(e), sum(a)
    if n1 <= 0 or n2 <= 0:
        return None
    eps = 1e-4
    value = 0.0
    for x, y in zip(e, a, strict=True):
        p, r = max(x / n1, eps), max(y / n2, eps)
        value += (r - p) * math.log(r / p)
    occupied = sum(1 for x, y in zip(e, a, strict=True) if x or y)
    return max(0.0, value - max(occupied - 1, 0) * (1 / n1 + 1 / n2))


@dataclass(frozen=True)
class Thresholds:
    min_requests: int
    max_error_ratio_increase: float
    max_p99_ratio: float
    p99_slack_ms: float
    max_psi: float

    @classmethod
    def from_settings(cls, settings: RolloutSettings) -> Thresholds:
        return cls(
            settings.rollout_min_requests,
            settings.rollout_max_error_ratio_increase,
            settings.rollout_max_p99_ratio,
            settings.rollout_p99_slack_ms,
            settings.rollout_max_psi,
        )


@dataclass(frozen=True)
class Verdict:
    outcome: str  # pass | fail | wait
    reason: str
    numbers: dict[str, Any]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def shadow_summary(window: Mapping[Key, float]) -> dict[str, Any]:
    """Agreement of the challenger with the champion on the copies it got (shadow mode)."""
    agree = window.get((SHADOW_ROWS, "", "agree"), 0.0)
    disagree = window.get((SHADOW_ROWS, "", "disagree"), 0.0)
    rows = agree + disagree
    outcomes = {
        o: window.get((SHADOW_REQUESTS, "", o), 0.0) for o in ("compared", "dropped", "error", "timeout")
    }
    return {
        "rows_compared": rows,
        "agreement_rate": round(agree / rows, 4) if rows else None,
        "mean_abs_delta_p": round(window.get((SHADOW_ABS_DELTA, "", ""), 0.0) / rows, 4) if rows else None,
        "copies": outcomes,
    }


def analyze(window: Mapping[Key, float], champion: str, challenger: str, limits: Thresholds) -> Verdict:
    """The step's verdict from the window's counts of both versions."""
    ch, base = VersionWindow.of(window, challenger), VersionWindow.of(window, champion)
    ch_p99, base_p99 = ch.quantile(0.99), base.quantile(0.99)
    drift = psi(base.score_bins, ch.score_bins)
    numbers: dict[str, Any] = {
        "challenger_requests": ch.requests,
        "champion_requests": base.requests,
        "challenger_error_ratio": round(ch.error_ratio, 4),
        "champion_error_ratio": round(base.error_ratio, 4),
        "challenger_p99_ms": _ms(ch_p99),
        "champion_p99_ms": _ms(base_p99),
        "psi": None if drift is None else round(drift, 4),
    }
    if ch.requests < limits.min_requests:
        return Verdict(
            "wait", f"{ch.requests:.0f} of {limits.min_requests} challenger requests so far", numbers
        )
    failures = []
    if ch.error_ratio > base.error_ratio + limits.max_error_ratio_increase:
        failures.append(
            f"error ratio {ch.error_ratio:.2%} vs the champion's {base.error_ratio:.2%} "
            f"(allowed +{limits.max_error_ratio_increase:.2%})"
        )
    if ch_p99 is not None and base_p99 is not None:
        allowed = max(base_p99 * limits.max_p99_ratio, base_p99 + limits.p99_slack_ms / 1000)
        if ch_p99 > allowed:
            failures.append(
                f"p99 latency {ch_p99 * 1000:.1f} ms vs the champion's {base_p99 * 1000:.1f} ms "
                f"(allowed {allowed * 1000:.1f} ms)"
            )
    if drift is not None and drift > limits.max_psi:
        failures.append(
            f"predicted-probability distribution moved: PSI {drift:.2f} against the champion's "
            f"(allowed {limits.max_psi:g})"
        )
    if failures:
        return Verdict("fail", "; ".join(failures), numbers)
    return Verdict(
        "pass",
        f"error ratio {ch.error_ratio:.2%}, p99 {numbers['challenger_p99_ms']} ms, PSI {numbers['psi']}",
        numbers,
    )
