"""Pure training logic: parameter parsing, model building, the promotion decision, reference stats."""

from __future__ import annotations

import pandas as pd
import pytest

from modelops.errors import InvalidInput
from modelops.training.evaluation import Comparison, Threshold, decide
from modelops.training.train import build_model, parse_params, reference_stats


def test_parse_params_types() -> None:
    assert parse_params(
        ["C=0.5", "max_iter=200", "penalty=l2", "fit_intercept=false", "class_weight=None"]
    ) == {
        "C": 0.5,
        "max_iter": 200,
        "penalty": "l2",
        "fit_intercept": False,
        "class_weight": None,
    }


@pytest.mark.parametrize("bad", ["C", "=3", ""])
def test_parse_params_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_params([bad])
    assert info.value.field == "param"


def test_build_model_names_unknown_parameter_and_algorithm() -> None:
    with pytest.raises(InvalidInput) as info:
        build_model("random_forest", {"depth": 3}, 0)
    assert info.value.field == "depth" and "max_depth" in info.value.message
    with pytest.raises(InvalidInput) as info:
        build_model("svm", {}, 0)
    assert info.value.field == "algorithm"
    assert build_model("logreg", {"C": 2.0}, 0).named_steps["clf"].C == 2.0


def comparison(metric: str, new: float, old: float | None, champion: str | None) -> Comparison:
    return Comparison(
        "the candidate's held-out split",
        114,
        {metric: new},
        champion_version=champion,
        champion=None if old is None else {metric: old},
    )


@pytest.mark.parametrize(
    ("promote", "metric", "new", "old", "champion", "delta", "expected"),
    [
        ("auto", "roc_auc", 0.95, 0.90, "3", 0.0, True),
        ("auto", "roc_auc", 0.90, 0.90, "3", 0.0, True),  # ties promote (>=)
        ("auto", "roc_auc", 0.89, 0.90, "3", 0.0, False),
        ("auto", "roc_auc", 0.89, 0.90, "3", 0.02, True),  # within the non-inferiority margin
        ("auto", "log_loss", 0.10, 0.20, "3", 0.0, True),  # lower is better
        ("auto", "log_loss", 0.30, 0.20, "3", 0.0, False),
        ("auto", "log_loss", 0.21, 0.20, "3", 0.05, True),
        ("auto", "roc_auc", 0.10, None, None, 0.0, True),  # nobody holds the alias yet
        ("always", "roc_auc", 0.10, 0.90, "3", 0.0, True),
        ("never", "roc_auc", 0.99, 0.10, "3", 0.0, False),
    ],
)
def test_promotion_decision_on_the_same_rows(
    promote: str,
    metric: str,
    new: float,
    old: float | None,
    champion: str | None,
    delta: float,
    expected: bool,
) -> None:
    promoted, reason = decide(promote, metric, delta, comparison(metric, new, old, champion), [])
    assert promoted is expected
    if promote == "auto" and old is not None:  # both numbers, and where they were measured
        assert f"{new:.4f}" in reason and f"{old:.4f}" in reason and "114 rows" in reason


def test_a_champion_that_could_not_be_scored_is_not_replaced_automatically() -> None:
    failed = comparison("roc_auc", 0.99, None, "3")
    failed.champion_error = "cannot be loaded: the model is not signed"
    promoted, reason = decide("auto", "roc_auc", 0.0, failed, [])
    assert not promoted and "champion v3 could not be evaluated" in reason and "not signed" in reason


def test_thresholds_bar_promotion_and_parse_strictly() -> None:
    bar = Threshold.parse("accuracy >= 0.9")
    assert (bar.metric, bar.op, bar.value) == ("accuracy", ">=", 0.9) and str(bar) == "accuracy>=0.9"
    scored = comparison("accuracy", 0.85, None, None)
    scored.thresholds = {str(bar): bar.passes(0.85)}
    promoted, reason = decide("auto", "accuracy", 0.0, scored, [bar])
    assert not promoted and "fails --threshold accuracy>=0.9" in reason and "0.8500" in reason
    with pytest.raises(InvalidInput) as info:
        Threshold.parse("accuracy > 0.9")
    assert info.value.field == "threshold"


def test_reference_stats() -> None:
    stats = reference_stats(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]}))
    a = stats["features"]["a"]
    assert (
        stats["n_rows"] == 4 and a["count"] == 4 and a["mean"] == 2.5 and a["min"] == 1.0 and a["max"] == 4.0
    )
    assert a["quantiles"]["0.5"] == 2.5
