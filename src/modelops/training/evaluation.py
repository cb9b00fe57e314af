"""Evaluated promotion: the candidate and the current champion scored on the same rows, then the decision.

A run's own logged metric was measured on its own split: an easier split reports a higher AUC for a worse model.
So the decision compares both models on one set of rows (the candidate's held-out split, or a fixed `--eval-data`
set), with a non-inferiority margin and optional absolute thresholds, and says both numbers in its reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from modelops.errors import InvalidInput, ModelOpsError
from modelops.training.train import LOWER_IS_BETTER, score_predictions

log = logging.getLogger(__name__)

THRESHOLD = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Threshold:
    """An absolute bar the candidate must clear on the evaluation rows, e.g. `accuracy>=0.9`."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        match = THRESHOLD.match(text)
        if not match:
            raise InvalidInput(
                f"--threshold {text!r} is not of the form metric>=value or metric<=value", field="threshold"
            )
        return cls(match[1], match[2], float(match[3]))

    def passes(self, value: float) -> bool:
        return value >= self.value if self.op == ">=" else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass
class Comparison:
    """Both models' metrics on the same rows; `champion_error` when the champion could not be scored."""

    data: str
    rows: int
    candidate: dict[str, float]
    champion_version: str | None = None
    champion: dict[str, float] | None = None
    champion_error: str | None = None
    thresholds: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "rows": self.rows,
            "candidate": self.candidate,
            "champion_version": self.champion_version,
            "champion": self.champion,
            "champion_error": self.champion_error,
            "thresholds": self.thresholds,
        }


def score_candidate(model: Any, x: pd.DataFrame, y: np.ndarray, positive: Any) -> dict[str, float]:
    values = x.to_numpy(dtype=np.float64)
    return score_predictions(
        list(model.classes_), model.predict(values), model.predict_proba(values), y, positive
    )


def score_champion(champion: Any, x: pd.DataFrame, y: np.ndarray, positive: Any) -> dict[str, float]:
    """Score a loaded champion (modelops.serving.model.LoadedModel) on rows given by column name."""
    missing = [c for c in champion.columns if c not in x.columns]
    if missing:
        raise ModelOpsError(f"it expects features the evaluation data lacks: {', '.join(missing[:5])}")
    if champion.classes is None:
        raise ModelOpsError("it gives no class probabilities")
    prediction = champion.predict(np.ascontiguousarray(x[champion.columns].to_numpy(dtype=np.float64)))
    if prediction.probabilities is None:
        raise ModelOpsError("it gives no class probabilities")
    labels = set(map(str, np.unique(y)))
    if not labels <= set(map(str, champion.classes)):
        raise ModelOpsError(f"its classes {champion.classes} differ from the data's labels {sorted(labels)}")
    classes = [type(y[0])(c) if len(y) else c for c in champion.classes]
    return score_predictions(classes, np.asarray(prediction.labels), prediction.probabilities, y, positive)


def decide(
    promote: str,
    metric: str,
    min_delta: float,
    comparison: Comparison,
    thresholds: list[Threshold],
) -> tuple[bool, str]:
    """(promote?, reason). The reason quotes both scores on the same rows."""
    if promote == "never":
        return False, "--promote never"
    failed = [t for t in thresholds if not comparison.thresholds.get(str(t), False)]
    if promote == "always":
        return True, "--promote always"
    where = f"on {comparison.data} ({comparison.rows} rows)"
    if failed:
        scores = ", ".join(
            f"{t.metric} {comparison.candidate.get(t.metric, float('nan')):.4f}" for t in failed
        )
        return False, f"fails --threshold {', '.join(map(str, failed))} {where}: {scores}"
    new = comparison.candidate[metric]
    if comparison.champion_version is None:
        return True, f"no version held the alias yet ({metric} {new:.4f} {where})"
    version = comparison.champion_version
    if comparison.champion is None:
        return False, (
            f"champion v{version} could not be evaluated ({comparison.champion_error}); not replaced "
            f"automatically: check it, then use --promote always (candidate {metric} {new:.4f} {where})"
        )
    old = comparison.champion[metric]
    lower = metric in LOWER_IS_BETTER
    ok = new <= old + min_delta if lower else new >= old - min_delta
    margin = f" with --min-delta {min_delta:g}" if min_delta else ""
    if ok:
        relation = "<=" if lower else ">="
        return True, f"{metric} {new:.4f} {relation} champion v{version}'s {old:.4f} {where}{margin}"
    return False, f"{metric} {new:.4f} is worse than champion v{version}'s {old:.4f} {where}{margin}"
