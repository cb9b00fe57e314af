"""Fit and evaluate a classifier (pure: no MLflow here)."""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelops.errors import InvalidInput
from modelops.training.data import Dataset
from modelops.training.options import ALGORITHMS

# Metrics where a smaller value is better; every other metric is "greater is better".
LOWER_IS_BETTER = frozenset({"log_loss", "fit_time_s"})
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class TrainResult:
    """A fitted model with its held-out metrics and what is needed to log it."""

    model: Any
    algorithm: str
    params: dict[str, Any]
    metrics: dict[str, float]
    x_train: pd.DataFrame
    classes: list[Any]
    positive_class: Any = None
    x_test: pd.DataFrame | None = None
    y_test: np.ndarray | None = None


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """Turn ["C=0.5", "penalty=l2"] into {"C": 0.5, "penalty": "l2"}; InvalidInput names a bad one."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--param {pair!r} is not of the form key=value", field="param")
        raw = raw.strip()
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"none": None, "true": True, "false": False}.get(raw.lower(), raw)
        params[key] = value
    return params


def _estimator(algorithm: str, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if algorithm == "logreg":
        return LogisticRegression(max_iter=1000, random_state=seed)
    if algorithm == "random_forest":
        return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    if algorithm == "gradient_boosting":
        return GradientBoostingClassifier(random_state=seed)
    raise InvalidInput(
        f"unknown algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}", field="algorithm"
    )


def build_model(algorithm: str, params: dict[str, Any], seed: int) -> Any:
    """The sklearn estimator for `algorithm` with `params` applied; InvalidInput names an unknown one."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    estimator = _estimator(algorithm, seed)
    known = estimator.get_params()
    for key in params:
        if key not in known:
            raise InvalidInput(
                f"unknown parameter {key!r} for {algorithm}; known: {', '.join(sorted(known))}", field=key
            )
    estimator.set_params(**params)
    if algorithm == "logreg":
        return Pipeline([("scale", StandardScaler()), ("clf", estimator)])
    return estimator


def _fit(model: Any, x: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> None:
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        model.fit(x, y)
    except InvalidParameterError as exc:
        message = str(exc)
        field = next((k for k in params if f"'{k}'" in message), "param")
        raise InvalidInput(f"bad parameter value: {message}", field=field) from exc
    except (ValueError, TypeError) as exc:
        field = next((k for k in params if k in str(exc)), "param")
        raise InvalidInput(f"model cannot be fitted with these parameters: {exc}", field=field) from exc


def positive_label(classes: list[Any], positive_class: str | None) -> Any:
    """The class the binary metrics are about: `positive_class` (matched as text, since it comes from a flag or
    an environment variable), else the second of the sorted classes (1 of 0/1, "yes" of no/yes)."""
    ordered = sorted(classes, key=str)
    if positive_class is None:
        return ordered[-1] if len(ordered) == 2 else None
    for candidate in ordered:
        if str(candidate) == positive_class:
            return candidate
    raise InvalidInput(
        f"--positive-class {positive_class!r} is not one of the labels: {', '.join(map(str, ordered))}",
        field="positive_class",
    )


def evaluate(model: Any, x: np.ndarray, y: np.ndarray, positive: Any = None) -> dict[str, float]:
    """Classification metrics of a fitted estimator on held-out data."""
    return score_predictions(list(model.classes_), model.predict(x), model.predict_proba(x), y, positive)


def score_predictions(
    classes: list[Any], predicted: np.ndarray, proba: np.ndarray, y: np.ndarray, positive: Any = None
) -> dict[str, float]:
    """Classification metrics from predicted labels and class probabilities (columns follow `classes`).
    Binary metrics are about the `positive` class. Works for any model, ours or a loaded champion."""
    from sklearn import metrics

    binary = len(classes) == 2
    if binary:
        positive = positive if positive is not None else positive_label(classes, None)
        column = classes.index(positive)
        roc_auc = metrics.roc_auc_score(np.asarray(y) == positive, proba[:, column])
        averaging: dict[str, Any] = {"average": "binary", "pos_label": positive}
    else:
        roc_auc = metrics.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
        averaging = {"average": "macro"}
    return {
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "precision": float(metrics.precision_score(y, predicted, zero_division=0, **averaging)),
        "recall": float(metrics.recall_score(y, predicted, zero_division=0, **averaging)),
        "f1": float(metrics.f1_score(y, predicted, zero_division=0, **averaging)),
        "roc_auc": float(roc_auc),
        "log_loss": float(metrics.log_loss(y, proba, labels=classes)),
    }


def fit_and_evaluate(
    dataset: Dataset,
    algorithm: str,
    params: dict[str, Any],
    test_size: float,
    seed: int,
    positive_class: str | None = None,
) -> TrainResult:
    """Split, fit on the train part and evaluate on the held-out part."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise InvalidInput(f"--test-size must be between 0 and 1, got {test_size}", field="test_size")
    model = build_model(algorithm, params, seed)
    x = dataset.features
    y = dataset.target.to_numpy()
    positive = positive_label(list(np.unique(y)), positive_class) if len(np.unique(y)) == 2 else None
    if positive_class is not None and positive is None:
        raise InvalidInput("--positive-class applies to two-valued labels only", field="positive_class")
    counts = pd.Series(y).value_counts()
    stratify = y if counts.min() >= 2 else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_size, random_state=seed, stratify=stratify
        )
    except ValueError as exc:
        raise InvalidInput(f"cannot split {dataset.n_rows} rows: {exc}", field="test_size") from exc
    if len(np.unique(y_train)) < 2:
        raise InvalidInput("the training split has a single class; use more data", field="data")
    # Fit on plain arrays: the served model then predicts on numpy without DataFrame overhead.
    start = time.perf_counter()
    _fit(model, x_train.to_numpy(), y_train, params)
    fit_time = time.perf_counter() - start
    metrics = evaluate(model, x_test.to_numpy(), y_test, positive)
    metrics["fit_time_s"] = fit_time
    return TrainResult(
        model, algorithm, params, metrics, x_train, list(model.classes_), positive, x_test, y_test
    )


def is_better(candidate: float, champion: float, metric: str) -> bool:
    """True when `candidate` is at least as good as `champion` for this metric."""
    return candidate <= champion if metric in LOWER_IS_BETTER else candidate >= champion


def reference_stats(features: pd.DataFrame) -> dict[str, Any]:
    """Per-feature statistics of the training data, kept for drift detection."""
    stats: dict[str, Any] = {}
    for column in features.columns:
        values = features[column].to_numpy(dtype="float64")
        quantiles = np.quantile(values, QUANTILES)
        stats[str(column)] = {
            "count": int(values.size),
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
        }
    return {"n_rows": len(features), "features": stats}
