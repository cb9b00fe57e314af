"""Labels joined to answers: live (in the worker that answered) and offline (from the prediction log).

Live: each worker keeps its recent answers (a bounded map request id -> answer) and joins the labels sent to
it; behind a load balancer a label reaches a random worker, so live accuracy and ROC AUC are computed from
the share of labels that land where their answer was made: an unbiased estimate, not a census. The exact
join is offline: every worker logs every label it receives, and `labelled_records` joins them to the logged
answers by (request id, row), whichever worker or replica answered.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelops.monitoring import metrics
from modelops.monitoring.predlog import FeedbackItem

if TYPE_CHECKING:
    from modelops.serving.service import PredictionEvent

LIVE_WINDOW_LABELS = 1000
"""Live accuracy and ROC AUC are over this many most recent labelled rows per version (per worker)."""


_Answer = tuple[str, np.ndarray, "np.ndarray | None", "tuple[str, ...] | None"]
"""(version, labels, probabilities, class names) of one answer. A plain tuple on purpose: it holds no object the
garbage collector tracks, so the collector untracks it at its first pass. A dataclass stayed tracked: at
single-row traffic the tens of thousands held here made every full collection stop the event loop for
20-100 ms (the c32 p99 of issue 12)."""


@dataclass(frozen=True)
class _Labelled:
    correct: bool
    positive: bool | None  # the label is the positive (last) class of a binary classifier
    score: float | None  # the answer's probability of that class


class FeedbackJoin:
    """Recent answers of this worker (at most `max_pending_rows` rows, oldest forgotten first) and, per version,
    a window of the last `window` labelled rows with the gauges computed from it."""

    def __init__(self, max_pending_rows: int, window: int = LIVE_WINDOW_LABELS) -> None:
        self.max_pending_rows = max_pending_rows
        self.window = window
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._rows = 0
        self._windows: dict[str, deque[_Labelled]] = {}
        self._classes_of: Any = None
        self._classes: tuple[str, ...] | None = None

    def observe(self, event: PredictionEvent) -> None:
        """A prediction listener: remember the answer (O(1) amortised)."""
        model = event.model
        if model is not self._classes_of:  # the class names change only with the model: not per request
            self._classes_of = model
            self._classes = tuple(label_text(c) for c in model.classes) if model.classes else None
        classes = self._classes
        # own copies: a request's answer is a slice of its micro-batch's arrays, and held here for long it would
        # keep the whole batch's arrays alive (a 1-row answer pinning a 255-row batch's)
        labels = _own(event.prediction.labels)
        probabilities = event.prediction.probabilities
        old = self._answers.pop(event.request_id, None)
        if old is not None:
            self._rows -= len(old[1])
        answer = (
            event.model.version,
            labels,
            None if probabilities is None else _own(probabilities),
            classes,
        )
        self._answers[event.request_id] = answer
        self._rows += len(labels)
        while self._rows > self.max_pending_rows and self._answers:
            _, evicted = self._answers.popitem(last=False)
            self._rows -= len(evicted[1])

    def join(self, items: Iterable[FeedbackItem]) -> tuple[int, int]:
        """Join labels to the answers held here; returns (joined, unmatched) and refreshes the gauges."""
        joined = unmatched = 0
        touched: set[str] = set()
        for item in items:
            answer = self._answers.get(item.request_id)
            if answer is None or not 0 <= item.row < len(answer[1]):
                unmatched += 1
                continue
            version, labels, probabilities, classes = answer
            label = label_text(item.label)
            predicted = label_text(labels[item.row].item())
            positive: bool | None = None
            score: float | None = None
            if classes is not None and len(classes) == 2 and probabilities is not None:
                positive = label == classes[1]
                score = float(probabilities[item.row, 1])
            window = self._windows.setdefault(version, deque(maxlen=self.window))
            window.append(_Labelled(label == predicted, positive, score))
            touched.add(version)
            joined += 1
        metrics.FEEDBACK_LABELS.labels("true").inc(joined)
        metrics.FEEDBACK_LABELS.labels("false").inc(unmatched)
        for version in touched:
            self._publish(version)
        return joined, unmatched

    def live(self, version: str) -> dict[str, Any]:
        """{"labels", "accuracy", "roc_auc"} of a version's window (None where not computable)."""
        window = self._windows.get(version, deque())
        accuracy = sum(w.correct for w in window) / len(window) if window else None
        return {"labels": len(window), "accuracy": accuracy, "roc_auc": _roc_auc(window)}

    def _publish(self, version: str) -> None:
        live = self.live(version)
        metrics.LIVE_LABELS.labels(version).set(live["labels"])
        if live["accuracy"] is not None:
            metrics.LIVE_ACCURACY.labels(version).set(live["accuracy"])
        if live["roc_auc"] is not None:
            metrics.LIVE_ROC_AUC.labels(version).set(live["roc_auc"])


def _own(values: np.ndarray) -> np.ndarray:
    return values if values.base is None else values.copy()


def label_text(label: object) -> str:
    """A label as text, so that 1, 1.0 and "1" name the same class (JSON clients differ in which they send)."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _roc_auc(window: Iterable[_Labelled]) -> float | None:
    """Mann-Whitney ROC AUC (ties count half) of the binary labelled rows; None without both classes."""
    pairs = [(w.score, w.positive) for w in window if w.score is not None and w.positive is not None]
    if not pairs:
        return None
    scores = np.array([p[0] for p in pairs], dtype=np.float64)
    truth = np.array([p[1] for p in pairs], dtype=bool)
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks of tied scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- offline join ----------------------------------------------------------------------------------------
def labelled_records(
    answers: Iterable[dict[str, Any]], labels: Iterable[dict[str, Any]]
) -> list[tuple[dict[str, Any], Any]]:
    """(answer record, label) for every logged answer row that has a label, joined by (request id, row).

    The latest label of a row wins (by its "ts"); an answer row logged twice (a write retried after the
    store took it) counts once."""
    latest: dict[tuple[str, int], tuple[float, Any]] = {}
    for record in labels:
        key = (str(record.get("request_id")), int(record.get("row") or 0))
        ts = float(record.get("ts") or 0.0)
        if key not in latest or ts >= latest[key][0]:
            latest[key] = (ts, record.get("label"))
    joined: list[tuple[dict[str, Any], Any]] = []
    seen: set[tuple[str, int]] = set()
    for record in answers:
        key = (str(record.get("request_id")), int(record.get("row") or 0))
        if key in latest and key not in seen:
            seen.add(key)
            joined.append((record, latest[key][1]))
    return joined
