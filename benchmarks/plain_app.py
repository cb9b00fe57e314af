"""The reference "plain FastAPI + numpy" app: what a user writes by hand in ten minutes.

Loads the same sklearn model natively and predicts on numpy; pydantic parses the body.
Started by benchmarks/serving.py with MODEL_PATH pointing at a downloaded MLflow model folder.
"""

from __future__ import annotations

import os

import mlflow.sklearn
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = mlflow.sklearn.load_model(os.environ["MODEL_PATH"])
app = FastAPI()


class Body(BaseModel):
    features: list[float] | None = None
    instances: list[list[float]] | None = None


@app.post("/predict")
def predict(body: Body) -> dict[str, object]:
    rows = np.array(body.instances if body.instances is not None else [body.features], dtype=np.float64)
    proba = model.predict_proba(rows)
    return {"predictions": model.classes_[proba.argmax(axis=1)].tolist(), "probabilities": proba.tolist()}
