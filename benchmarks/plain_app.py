"""The strongest hand-written baseline: an async plain FastAPI app, orjson in and out, numpy predict.

What a careful user writes by hand: an `async` handler that reads the raw body, parses it with orjson straight
into a float64 array, predicts with the fitted sklearn model and answers with orjson. No validation beyond what
numpy and the model do, no metrics, no request ids: a ceiling for "FastAPI + the same model", not a product.
Started by benchmarks/serving.py with MODEL_PATH pointing at the joblib file of the same fitted model.
"""

from __future__ import annotations

import os

import joblib
import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

model = joblib.load(os.environ["MODEL_PATH"])
classes = model.classes_
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    single = "features" in body
    rows = np.asarray([body["features"]] if single else body["instances"], dtype=np.float64)
    proba = model.predict_proba(rows)
    labels = classes[proba.argmax(axis=1)].tolist()
    if single:
        out = {"prediction": labels[0], "probabilities": proba[0].tolist()}
    else:
        out = {"predictions": labels, "probabilities": proba.tolist()}
    return Response(orjson.dumps(out), media_type="application/json")
