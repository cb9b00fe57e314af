"""Pure training logic: parameter parsing, model building, the promotion decision, reference stats."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from modelops.errors import InvalidInput
from modelops.training.publish import decide
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


CHAMPION = SimpleNamespace(version="3")


@pytest.mark.parametrize(
    ("promote", "metric", "new", "old", "champion", "expected"),
    [
        ("auto", "roc_auc", 0.95, 0.90, CHAMPION, True),
        ("auto", "roc_auc", 0.90, 0.90, CHAMPION, True),  # ties promote (>=)
        ("auto", "roc_auc", 0.89, 0.90, CHAMPION, False),
        ("auto", "log_loss", 0.10, 0.20, CHAMPION, True),  # lower is better
        ("auto", "log_loss", 0.30, 0.20, CHAMPION, False),
        ("auto", "roc_auc", 0.10, None, None, True),  # nobody holds the alias yet
        ("always", "roc_auc", 0.10, 0.90, CHAMPION, True),
        ("never", "roc_auc", 0.99, 0.10, CHAMPION, False),
    ],
)
def test_promotion_decision(
    promote: str, metric: str, new: float, old: float | None, champion: object, expected: bool
) -> None:
    promoted, reason = decide(promote, metric, {metric: new}, champion, {} if old is None else {metric: old})
    assert promoted is expected and reason


def test_champion_without_the_metric_is_replaced() -> None:
    promoted, reason = decide("auto", "f1", {"f1": 0.5}, CHAMPION, {"roc_auc": 0.9})
    assert promoted and "no f1 metric" in reason


def test_reference_stats() -> None:
    stats = reference_stats(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]}))
    a = stats["features"]["a"]
    assert (
        stats["n_rows"] == 4 and a["count"] == 4 and a["mean"] == 2.5 and a["min"] == 1.0 and a["max"] == 4.0
    )
    assert a["quantiles"]["0.5"] == 2.5
