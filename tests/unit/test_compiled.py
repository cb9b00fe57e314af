"""Compiled predictors answer exactly as sklearn, and only where they know the model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from modelops.serving.compiled import compile_proba

X, Y = load_breast_cancer(return_X_y=True)


@pytest.mark.parametrize(
    "model",
    [
        Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))]),
        Pipeline([("scale", StandardScaler(with_mean=False)), ("model", LogisticRegression(max_iter=2000))]),
        LogisticRegression(max_iter=5000),
    ],
    ids=["scaled", "scaled-no-mean", "bare"],
)
def test_a_linear_pipeline_compiles_and_answers_as_sklearn(model: object) -> None:
    model.fit(X, Y)  # type: ignore[attr-defined]
    fast = compile_proba(model, X[:1])
    assert fast is not None
    for rows in (X[:1], X[100:101], X, X * 3.0):  # one row, all rows, rows far off the training data
        assert np.allclose(fast(rows), model.predict_proba(rows), rtol=0, atol=1e-12)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="30 features"):
        fast(X[:, :5])


@pytest.mark.parametrize(
    "model",
    [
        Pipeline([("scale", MinMaxScaler()), ("model", LogisticRegression(max_iter=2000))]),
        RandomForestClassifier(n_estimators=3, random_state=0),
    ],
    ids=["other-scaler", "forest"],
)
def test_anything_else_keeps_sklearns_predict(model: object) -> None:
    model.fit(X, Y)  # type: ignore[attr-defined]
    assert compile_proba(model, X[:1]) is None


def test_multiclass_keeps_sklearns_predict() -> None:
    model = LogisticRegression(max_iter=2000).fit(X[:, :4], np.arange(len(X)) % 3)
    assert compile_proba(model, X[:1, :4]) is None


def test_a_model_whose_check_fails_keeps_sklearns_predict() -> None:
    """A model whose own predict_proba answers otherwise than its parameters say: the check at load catches it."""
    model = LogisticRegression(max_iter=5000).fit(X, Y)
    sklearn_proba = model.predict_proba
    model.predict_proba = lambda x: np.asarray(sklearn_proba(x)) * 0.5 + 0.25  # type: ignore[method-assign]
    assert compile_proba(model, X[:1]) is None
    fine = LogisticRegression(max_iter=5000).fit(X, Y)
    assert compile_proba(fine, X[:1]) is not None  # the same model, unchanged, compiles
