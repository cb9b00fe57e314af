"""Prometheus metrics of the model server. Works with several worker processes when
PROMETHEUS_MULTIPROC_DIR is set (the server sets it before the workers start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from modelops.settings import prometheus_multiproc_dir

if TYPE_CHECKING:
    from modelops.serving.model import LoadedModel

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10000)

REQUESTS = Counter(
    "modelops_requests", "HTTP requests by endpoint, method and status", ["endpoint", "method", "status"]
)
LATENCY = Histogram(
    "modelops_request_duration_seconds",
    "HTTP request latency by endpoint",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
ROWS_PREDICTED = Counter("modelops_predicted_rows", "Rows predicted")

_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one HTTP request in REQUESTS and LATENCY. Their label children are looked up once per (endpoint,
    method, status), not per request: prometheus_client's `labels()` validates and locks on every call, a few
    per cent of a single-row prediction's time. The label values are bounded (route templates, the HTTP parser's
    methods, status codes); the map is dropped past 4,096 keys all the same."""
    key = (endpoint, method, status)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        if len(_REQUEST_SERIES) >= 4096:
            _REQUEST_SERIES.clear()
        series = _REQUEST_SERIES[key] = (
            REQUESTS.labels(endpoint, method, str(status)),
            LATENCY.labels(endpoint),
        )
    series[0].inc()
    series[1].observe(seconds)


REQUEST_ROWS = Histogram("modelops_request_rows", "Rows per prediction request", buckets=ROW_BUCKETS)
BATCH_ROWS = Histogram(
    "modelops_batch_rows", "Rows per model predict call (after micro-batching)", buckets=ROW_BUCKETS
)
BATCH_REQUESTS = Histogram(
    "modelops_batch_requests",
    "Requests merged into one predict call",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
MODEL_INFO = Gauge(
    "modelops_model_info",
    "The served model version (value 1)",
    ["name", "version", "run_id"],
    multiprocess_mode="livemax",
)
MODEL_LOADED = Gauge(
    "modelops_model_loaded", "1 when a model is loaded (min over workers)", multiprocess_mode="livemin"
)
MODEL_LOADS = Counter("modelops_model_loads", "Model load attempts by result", ["result"])
MODEL_LOAD_FAILURES = Counter("modelops_model_load_failures", "Model versions that failed to load or warm up")
MODEL_REFUSALS = Counter(
    "modelops_model_refusals",
    "Versions refused by the trust checks, by reason (unsigned, unknown_key, tampered, pickle, ...)",
    ["reason"],
)
# every reason exists from the start (at 0), so rules and dashboards see the series before the first refusal
REFUSAL_REASONS = (
    "unsigned",
    "unknown_key",
    "tampered",
    "bad_signature",
    "identity_mismatch",
    "pickle",
    "code",
    "untrusted_format",
    "untrusted_types",
    "untrusted_source",
)
for _reason in REFUSAL_REASONS:
    MODEL_REFUSALS.labels(_reason)
MODEL_LOAD_DURATION = Histogram(
    "modelops_model_load_duration_seconds",
    "Time to download, load and warm a model version",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
MODEL_SWAPS = Counter("modelops_model_swaps", "Times the served model was replaced")
ALIAS_POLLS = Counter("modelops_alias_polls", "Registry alias look-ups by result", ["result"])
ALIAS_UNFOLLOWED_POLLS = Gauge(
    "modelops_alias_unfollowed_polls",
    "Consecutive polls in which the served version differed from the alias (max over workers)",
    multiprocess_mode="livemax",
)


# Per served version (champion and challenger during a rollout): what rollout analysis and the console compare.
# Only versions loaded by this process get series, so the label's cardinality stays bounded.
VERSION_REQUESTS = Counter(
    "modelops_version_requests",
    "Prediction requests by the version that answered and outcome (ok, error)",
    ["version", "outcome"],
)
VERSION_LATENCY = Histogram(
    "modelops_version_predict_duration_seconds",
    "Time from a request's validated rows to its prediction, by version (batching wait included)",
    ["version"],
    buckets=LATENCY_BUCKETS,
)
VERSION_CLASSES = Counter(
    "modelops_version_predicted_rows", "Predicted rows by version and predicted class", ["version", "label"]
)
SCORE_BINS = 10
VERSION_SCORES = Counter(
    "modelops_version_score_rows",
    "Predicted rows by version and tenth of the positive class's probability (bin 0: [0, 0.1), ... 9: [0.9, 1])",
    ["version", "bin"],
)


SHADOW_REQUESTS = Counter(
    "modelops_shadow_requests",
    "Copies of requests for the challenger in shadow mode, by outcome (compared, dropped, error, timeout)",
    ["outcome"],
)
for _outcome in ("compared", "dropped", "error", "timeout"):
    SHADOW_REQUESTS.labels(_outcome)
SHADOW_ROWS = Counter(
    "modelops_shadow_rows",
    "Shadow rows by whether the challenger's label agreed with the champion's",
    ["agreement"],
)
for _agreement in ("agree", "disagree"):
    SHADOW_ROWS.labels(_agreement)
SHADOW_ABS_DELTA = Counter(
    "modelops_shadow_abs_delta_p",
    "Sum over shadow rows of |challenger - champion| positive-class probability",
)
ROLLOUT_PERCENT = Gauge(
    "modelops_rollout_percent",
    "The challenger's share of traffic this replica applies now (0 without a rollout)",
    ["version", "mode"],
    multiprocess_mode="livemax",
)


class _VersionSeries:
    """One version's metric children, looked up once: `labels()` costs more than the increment itself, and this
    runs on every answered request."""

    __slots__ = ("classes", "errors", "latency", "ok", "scores", "version")

    def __init__(self, version: str) -> None:
        self.version = version
        self.ok = VERSION_REQUESTS.labels(version, "ok")
        self.errors = VERSION_REQUESTS.labels(version, "error")
        self.latency = VERSION_LATENCY.labels(version)
        self.scores = [VERSION_SCORES.labels(version, str(b)) for b in range(SCORE_BINS)]
        self.classes: dict[Any, Any] = {}

    def label(self, value: Any) -> Any:
        child = self.classes.get(value)
        if child is None:
            if len(self.classes) >= MAX_CLASS_SERIES:  # a regressor's labels are numbers: no series for them
                return None
            child = self.classes[value] = VERSION_CLASSES.labels(self.version, str(value))
        return child


MAX_CLASS_SERIES = 32
_SERIES: dict[str, _VersionSeries] = {}


def version_series(version: str) -> _VersionSeries:
    series = _SERIES.get(version)
    if series is None:
        if len(_SERIES) > 16:  # versions come and go with swaps and rollouts: keep the lookup small
            _SERIES.clear()
        series = _SERIES[version] = _VersionSeries(version)
    return series


def observe_version(version: str, labels: Any, probabilities: Any, latency_s: float) -> None:
    """Count one answered request (or shadow call) of `version`: its latency, predicted classes and score
    distribution."""
    series = version_series(version)
    series.ok.inc()
    series.latency.observe(latency_s)
    if len(labels) == 1:  # the common case, without numpy's sorting machinery
        value = labels[0]
        child = series.label(value.item() if hasattr(value, "item") else value)
        if child is not None:
            child.inc()
        if probabilities is not None and probabilities.ndim == 2 and probabilities.shape[1] >= 1:
            p = float(probabilities[0, -1])
            if p == p:  # not NaN (a model can answer NaN for extreme inputs: such rows get no bin)
                series.scores[min(max(int(p * SCORE_BINS), 0), SCORE_BINS - 1)].inc()
        return
    label_counts, bins = summarize(labels, probabilities)
    add_counts(series, label_counts, bins)


def summarize(labels: Any, probabilities: Any) -> tuple[list[tuple[Any, int]], list[int] | None]:
    """Rows per predicted label, and per tenth of the positive class's probability (None without
    probabilities): what observe_version counts, as plain numbers (the shadow worker sends them over a pipe)."""
    import numpy as np

    values, counts = np.unique(np.asarray(labels), return_counts=True)
    label_counts = list(zip(values.tolist(), counts.tolist(), strict=True))
    if probabilities is None or probabilities.ndim != 2 or probabilities.shape[1] < 1:
        return label_counts, None
    positive = probabilities[:, -1]
    positive = positive[np.isfinite(positive)]
    bins = np.clip((positive * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
    return label_counts, np.bincount(bins, minlength=SCORE_BINS).tolist()


def add_counts(series: _VersionSeries, label_counts: list[tuple[Any, int]], bins: list[int] | None) -> None:
    for value, count in label_counts:
        child = series.label(value)
        if child is None:
            break
        child.inc(count)
    for b, count in enumerate(bins or ()):
        if count:
            series.scores[b].inc(count)


FEATURE_DRIFT = Gauge(
    "modelops_feature_drift",
    "Kolmogorov-Smirnov statistic of served vs training rows, per feature (last full window; max over workers)",
    ["feature"],
    multiprocess_mode="livemax",
)
DRIFT_DETECTED = Gauge(
    "modelops_drift_detected",
    "1 when any feature drifted in the last full window (Bonferroni-corrected KS test; max over workers)",
    multiprocess_mode="livemax",
)


def set_drift(version: str, report: dict[str, Any]) -> None:
    """The drift gauges from a DriftMonitor report (no full window yet: drift 0, statistics unchanged)."""
    DRIFT_DETECTED.set(1 if report.get("drift") else 0)
    for feature in report.get("features", []):
        FEATURE_DRIFT.labels(feature["feature"]).set(feature["ks_statistic"])


def set_model_info(name: str, version: str, run_id: str | None, old: LoadedModel | None) -> None:
    if old is not None:
        MODEL_INFO.labels(old.name, old.version, old.run_id or "").set(0)
    MODEL_INFO.labels(name, version, run_id or "").set(1)
    MODEL_LOADED.set(1)


def render() -> bytes:
    """The exposition text: merged over all workers in multi-process mode."""
    if prometheus_multiproc_dir():
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
