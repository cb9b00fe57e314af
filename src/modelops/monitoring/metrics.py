"""Prometheus metrics of the prediction log and the feedback join (the default registry, like
serving/metrics.py, so `metrics.render` merges them over worker processes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LOG_RECORDS = Counter(
    "modelops_prediction_log_records",
    "Prediction-log rows by outcome: written, dropped (buffer full or nowhere to write), failed (given up)",
    ["outcome"],
)
LOG_WRITE_ERRORS = Counter(
    "modelops_prediction_log_write_errors", "Failed attempts to write a prediction-log file (retried)"
)
LOG_BUFFER_ROWS = Gauge(
    "modelops_prediction_log_buffer_rows",
    "Rows waiting in memory to be written to the prediction log (sum over workers)",
    multiprocess_mode="livesum",
)
FEEDBACK_LABELS = Counter(
    "modelops_feedback_labels",
    "Labels received on /feedback, by whether this worker still held the answer they label",
    ["joined"],
)
LIVE_ACCURACY = Gauge(
    "modelops_live_accuracy",
    "Accuracy over the last labelled answers of a version (an estimate: each worker joins its own answers)",
    ["version"],
    multiprocess_mode="livemostrecent",
)
LIVE_ROC_AUC = Gauge(
    "modelops_live_roc_auc",
    "ROC AUC over the last labelled answers of a binary classifier version (an estimate, as accuracy)",
    ["version"],
    multiprocess_mode="livemostrecent",
)
LIVE_LABELS = Gauge(
    "modelops_live_labels",
    "Labelled answers in the window live accuracy and ROC AUC are computed over (sum over workers)",
    ["version"],
    multiprocess_mode="livesum",
)

# every outcome exists from the start (at 0), so alert rules see the series before the first drop
for _outcome in ("written", "dropped", "failed"):
    LOG_RECORDS.labels(_outcome)
for _joined in ("true", "false"):
    FEEDBACK_LABELS.labels(_joined)
