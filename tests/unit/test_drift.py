"""Drift detection meets the issue's statistical bar on the built-in data with 200-row windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from modelops.monitoring.drift import DriftMonitor, build_reference

DATA = load_breast_cancer(as_frame=True).data
COLUMNS = [str(c) for c in DATA.columns]
REFERENCE = build_reference(DATA, seed=0)


def monitor(window: int = 200) -> DriftMonitor:
    return DriftMonitor(REFERENCE, COLUMNS, window_rows=window, false_alarm_rate=0.01)


def test_unshifted_windows_raise_false_alarms_in_under_one_percent() -> None:
    rng = np.random.default_rng(1)
    values = DATA.to_numpy()
    alarms = 0
    for _ in range(1000):
        m = monitor()
        m.observe(values[rng.integers(0, len(values), size=200)])  # drawn from the training distribution
        report = m.report()
        alarms += bool(report["drift"])
    assert alarms / 1000 < 0.01, alarms


def test_three_features_shifted_by_one_std_are_detected_within_200_rows() -> None:
    rng = np.random.default_rng(2)
    values = DATA.to_numpy()
    shifted = [0, 7, 20]
    detected = 0
    for _ in range(200):
        m = monitor()
        m.observe(values[rng.integers(0, len(values), size=200)])  # a full, unshifted window first
        rows = values[rng.integers(0, len(values), size=200)].copy()
        rows[:, shifted] += values[:, shifted].std(axis=0)
        m.observe(rows)  # the shift: within 200 rows
        report = m.report()
        names = {f["feature"] for f in report["features"] if f["drift"]}
        detected += bool(report["drift"]) and bool(names & {COLUMNS[i] for i in shifted})
    assert detected / 200 >= 0.95, detected


def test_window_is_bounded_and_waits_until_full() -> None:
    m = monitor(window=50)
    assert m.report()["drift"] is None
    values = DATA.to_numpy()
    for start in range(0, 500, 7):
        m.observe(values[start : min(start + 7, 500)])
    assert m.window().shape == (50, 30) and m.seen_rows == 500
    np.testing.assert_array_equal(np.sort(m.window(), axis=0), np.sort(values[450:500], axis=0))
    assert m.report()["rows_in_window"] == 50


def test_columns_follow_the_model_signature_order() -> None:
    reordered = list(reversed(COLUMNS))
    m = DriftMonitor(REFERENCE, reordered, window_rows=20)
    rows = DATA[reordered].to_numpy()[:20]
    m.observe(rows)
    assert m.report()["rows_in_window"] == 20
    assert pytest.approx(m.window()[:, m.columns.index(COLUMNS[0])]) == DATA[COLUMNS[0]].to_numpy()[:20]
    _ = pd  # pandas is the reference's input type
