"""Compiled predictors: a fitted linear pipeline as a few numpy operations, checked against sklearn at load.

sklearn's `predict_proba` spends most of a single-row call on validating its input again (array checks, dataframe
detection, fitted checks, tags): measured here as about a quarter of a single-row request (issue 12). For the
trainer's default model, StandardScaler steps then a binary LogisticRegression, the prediction is
`expit(((x - mean) / scale) @ coef.T + intercept)`, the same operations sklearn runs. The server has already
validated the rows (float64, the model's columns, finite), so nothing is checked less. A compiled predictor is
used only when it gives the same probabilities as sklearn on the model's input example and on rows spread around
it; anything else (other estimators, other steps, a mismatch) keeps sklearn's own predict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Proba = Callable[[np.ndarray], np.ndarray]
TOLERANCE = 1e-12  # probabilities may differ by rounding of a different summation order only


def _steps(model: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if type(model) is Pipeline:  # a subclass may predict otherwise
        return [step for _, step in model.steps if step is not None and step != "passthrough"]
    return [model]


def _linear_proba(model: Any) -> Proba | None:
    """predict_proba of StandardScaler* -> binary LogisticRegression as numpy, or None for anything else."""
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    steps = _steps(model)
    *scalers, last = steps
    if type(last) is not LogisticRegression or not all(type(s) is StandardScaler for s in scalers):
        return None
    coef = np.asarray(last.coef_, dtype=np.float64)
    if coef.ndim != 2 or coef.shape[0] != 1 or len(last.classes_) != 2:
        return None
    transforms = [
        (
            None if not s.with_mean else np.asarray(s.mean_, dtype=np.float64),
            None if not s.with_std else np.asarray(s.scale_, dtype=np.float64),
        )
        for s in scalers
    ]
    weights = coef.T.copy()
    intercept = np.asarray(last.intercept_, dtype=np.float64)
    width = coef.shape[1]

    def proba(x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected rows of {width} features, got shape {x.shape}")
        z = x
        for mean, scale in transforms:
            if mean is not None:
                z = z - mean
            if scale is not None:
                z = z / scale
        positive = expit(z @ weights + intercept).reshape(-1)
        out = np.empty((len(x), 2), dtype=np.float64)
        out[:, 1] = positive
        out[:, 0] = 1 - positive
        return out

    return proba


def compile_proba(model: Any, example: np.ndarray) -> Proba | None:
    """A faster predict_proba for `model`, or None. Checked against `model.predict_proba` on `example` and on
    rows spread around it (so every feature's weight takes part); None when they differ."""
    try:
        fast = _linear_proba(model)
    except Exception:  # an estimator shaped unlike what we know: keep sklearn's
        log.debug("no compiled predictor", exc_info=True)
        return None
    if fast is None or example.ndim != 2 or not len(example):
        return None
    rng = np.random.default_rng(0)
    base = example[:1].astype(np.float64)
    spread = np.abs(base) + 1.0
    probe = np.vstack([example.astype(np.float64), base + rng.normal(size=(64, base.shape[1])) * spread])
    try:
        expected = np.asarray(model.predict_proba(probe), dtype=np.float64)
        got = fast(probe)
    except Exception:
        log.debug("compiled predictor check failed", exc_info=True)
        return None
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=TOLERANCE):
        log.warning("compiled predictor differs from sklearn's: using sklearn's")
        return None
    return fast
