"""Drift detection on served rows: is what a version is asked about still what it was trained on?

The trainer stores, inside the signed model folder, per-feature decile edges and a reservoir sample of training
rows (`drift_reference.json`). Each replica keeps a bounded ring buffer of the rows it served per version; a
window of the last `window_rows` rows is compared with the reference, per feature:
- two-sample Kolmogorov-Smirnov against the reference sample: the verdict. A feature drifts when its p-value is
  below `false_alarm_rate / n_features` (Bonferroni): over all features, an unshifted window raises a false
  alarm with probability at most `false_alarm_rate`, however many features there are, and whatever the window
  size (the KS test is exact for the sizes it sees, where PSI's usual 0.1/0.2 thresholds depend on them);
- PSI over the training deciles: reported as an effect size (how much), not used for the verdict.
Observing a batch is a copy into a ring buffer; the statistics are computed when asked (GET /drift, a scrape).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FILE = "drift_reference.json"
SAMPLE_ROWS = 1000
EPSILON = 1e-4


def build_reference(features: Any, seed: int = 0, sample_rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """What detection needs from the training data (a pandas DataFrame): decile edges and a row sample."""
    values = np.asarray(features.to_numpy(dtype=np.float64))
    rng = np.random.default_rng(seed)
    index = rng.choice(len(values), size=min(sample_rows, len(values)), replace=False)
    edges = np.quantile(values, np.linspace(0.1, 0.9, 9), axis=0).T  # (features, 9 inner edges)
    return {
        "features": [str(c) for c in features.columns],
        "edges": edges.tolist(),
        "sample": values[np.sort(index)].tolist(),
    }


def write_reference(folder: Path, reference: dict[str, Any]) -> None:
    (folder / REFERENCE_FILE).write_text(json.dumps(reference))


def read_reference(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / REFERENCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"features", "edges", "sample"} <= set(data) else None


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    ks_statistic: float
    p_value: float
    psi: float
    threshold_p: float

    @property
    def drifted(self) -> bool:
        return self.p_value < self.threshold_p


class DriftMonitor:
    """Served rows of one version, and their drift against its training reference. Thread-safe."""

    def __init__(
        self,
        reference: dict[str, Any],
        columns: list[str],
        window_rows: int = 200,
        false_alarm_rate: float = 0.01,
    ) -> None:
        names = list(reference["features"])
        # the reference follows the training columns; served rows follow the model's signature
        order = [names.index(c) for c in columns if c in names]
        self.columns = [names[i] for i in order]
        self.positions = [columns.index(c) for c in self.columns]
        self.sample = np.asarray(reference["sample"], dtype=np.float64)[:, order]
        self.edges = np.asarray(reference["edges"], dtype=np.float64)[order]
        self.expected = np.stack([self._proportions(self.sample[:, j], j) for j in range(len(order))])
        self.window_rows = window_rows
        self.false_alarm_rate = false_alarm_rate
        self._buffer = np.empty((window_rows, len(order)), dtype=np.float64)
        self._filled = 0
        self._next = 0
        self.seen_rows = 0
        self._lock = threading.Lock()

    def _proportions(self, values: np.ndarray, feature: int) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges[feature], values, side="right"), minlength=10)
        return np.maximum(counts / max(1, len(values)), EPSILON)

    def observe(self, rows: np.ndarray) -> None:
        """Remember served rows (N x model columns); only the last `window_rows` are kept."""
        if not self.columns or rows.size == 0:
            return
        picked = rows[-self.window_rows :, self.positions]
        with self._lock:
            n = len(picked)
            end = self._next + n
            if end <= self.window_rows:
                self._buffer[self._next : end] = picked
            else:
                first = self.window_rows - self._next
                self._buffer[self._next :] = picked[:first]
                self._buffer[: n - first] = picked[first:]
            self._next = end % self.window_rows
            self._filled = min(self.window_rows, self._filled + n)
            self.seen_rows += len(rows)

    def window(self) -> np.ndarray:
        with self._lock:
            return self._buffer[: self._filled].copy()

    def evaluate(self) -> list[FeatureDrift] | None:
        """Per-feature drift of the current window; None until a full window has been served."""
        from scipy.stats import ks_2samp

        window = self.window()
        if len(window) < self.window_rows:
            return None
        threshold = self.false_alarm_rate / len(self.columns)
        results = []
        for j, name in enumerate(self.columns):
            test = ks_2samp(window[:, j], self.sample[:, j], method="auto")
            actual = self._proportions(window[:, j], j)
            psi = float(np.sum((actual - self.expected[j]) * np.log(actual / self.expected[j])))
            results.append(FeatureDrift(name, float(test.statistic), float(test.pvalue), psi, threshold))
        return results

    def report(self) -> dict[str, Any]:
        """What GET /drift answers for this version."""
        results = self.evaluate()
        window = min(self.seen_rows, self.window_rows)
        base = {
            "window_rows": self.window_rows,
            "rows_in_window": window,
            "seen_rows": self.seen_rows,
            "false_alarm_rate": self.false_alarm_rate,
            "test": "two-sample Kolmogorov-Smirnov vs the training sample, Bonferroni over features",
        }
        if results is None:
            return {
                **base,
                "drift": None,
                "reason": f"waiting for {self.window_rows} served rows",
                "features": [],
            }
        return {
            **base,
            "drift": any(r.drifted for r in results),
            "features": [
                {
                    "feature": r.feature,
                    "ks_statistic": round(r.ks_statistic, 4),
                    "p_value": r.p_value,
                    "threshold_p": r.threshold_p,
                    "psi": round(r.psi, 4),
                    "drift": r.drifted,
                }
                for r in results
            ],
        }
