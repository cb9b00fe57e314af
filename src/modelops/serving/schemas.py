"""Request parsing and response shapes: the simple API and Open Inference Protocol v2.

Parsing is hand-written on purpose: it turns JSON straight into one float64 array with a single
numpy call on the happy path, and only walks the values to name the offending field when that
fails. The pydantic models below document the same shapes in the OpenAPI schema.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from modelops.errors import InvalidInput, PayloadTooLarge
from modelops.serving.model import LoadedModel, Prediction

Number = float | int


# -- OpenAPI documentation models -------------------------------------------------------------------
class PredictRequest(BaseModel):
    """Send exactly one of `features` (one row) or `instances` (many rows)."""

    features: list[Number] | dict[str, Number] | None = Field(
        default=None, description="One row: values in signature order, or {feature name: value}."
    )
    instances: list[list[Number]] | list[dict[str, Number]] | None = Field(
        default=None, description="Many rows, each a list in signature order or a {name: value} object."
    )


class PredictResponse(BaseModel):
    prediction: Any | None = None
    predictions: list[Any] | None = None
    probabilities: list[float] | list[list[float]] | None = None
    classes: list[Any] | None = None
    model_name: str
    model_version: str
    run_id: str | None


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor]
    outputs: list[dict[str, Any]] | None = None


class DeployRequest(BaseModel):
    version: str | None = Field(default=None, description="Registered version to serve.")
    run_id: str | None = Field(default=None, description="Run whose model to serve (registered if needed).")


# -- parsing ----------------------------------------------------------------------------------------
V2_DTYPES = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(value: Any, field: str) -> None:
    if not _is_number(value):
        raise InvalidInput(f"{field} must be a number, got {type(value).__name__} {value!r}", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{field} must be finite, got {value}", field=field)


def _named_row(row: dict[str, Any], model: LoadedModel, field: str) -> list[Any]:
    try:
        values = [row[name] for name in model.columns]
    except KeyError as exc:
        raise InvalidInput(
            f"{field} is missing feature {exc.args[0]!r}", field=f"{field}.{exc.args[0]}"
        ) from None
    if len(row) != len(values):
        known = set(model.columns)
        unknown = next(k for k in row if k not in known)
        raise InvalidInput(f"{field} has unknown feature {unknown!r}", field=f"{field}.{unknown}")
    return values


def _locate_error(rows: list[Any], model: LoadedModel, field: str, single: bool) -> None:
    """Walk the rows and raise InvalidInput naming the first bad value (the slow path)."""
    n = model.n_features
    for i, row in enumerate(rows):
        where = field if single else f"{field}[{i}]"
        if not isinstance(row, list):
            raise InvalidInput(f"{where} must be a list of {n} numbers or an object", field=where)
        if len(row) != n:
            raise InvalidInput(f"{where} has {len(row)} values; the model expects {n}", field=where)
        for j, value in enumerate(row):
            _check_value(value, f"{where}[{j}]")


def _to_matrix(rows: list[Any], model: LoadedModel, field: str, single: bool, strict: bool) -> np.ndarray:
    if not single:
        rows = [
            _named_row(r, model, f"{field}[{i}]") if isinstance(r, dict) else r for i, r in enumerate(rows)
        ]
    if strict:  # the body holds JSON booleans: walk it so true/false are named, not cast to 1/0
        _locate_error(rows, model, field, single)
    try:
        x = np.array(rows)
    except (ValueError, TypeError):
        x = np.empty(0, dtype=object)
    if x.ndim != 2 or x.shape[1] != model.n_features or x.dtype.kind not in "fiu":
        _locate_error(rows, model, field, single)
        raise InvalidInput(f"{field} must be rows of {model.n_features} numbers", field=field)
    x = x.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        i, j = (int(v) for v in np.argwhere(~finite)[0])
        where = f"{field}[{j}]" if single else f"{field}[{i}][{j}]"
        raise InvalidInput(f"{where} must be finite", field=where)
    return x


def parse_predict(body: Any, model: LoadedModel, max_rows: int, raw: bytes) -> tuple[np.ndarray, bool]:
    """(rows as float64 N x F, single-row request?) or InvalidInput naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object with 'features' or 'instances'", field="body")
    has_features, has_instances = "features" in body, "instances" in body
    if has_features == has_instances:
        raise InvalidInput(
            "send exactly one of 'features' (one row) or 'instances' (many rows)", field="body"
        )
    strict = b"true" in raw or b"false" in raw
    if has_features:
        features = body["features"]
        if isinstance(features, dict):
            features = _named_row(features, model, "features")
        if not isinstance(features, list):
            raise InvalidInput("features must be a list of numbers or an object", field="features")
        return _to_matrix([features], model, "features", True, strict), True
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput("instances must be a list of rows", field="instances")
    if not instances:
        raise InvalidInput("instances is empty; send at least one row", field="instances")
    if len(instances) > max_rows:
        raise PayloadTooLarge(
            f"instances has {len(instances)} rows; the limit is {max_rows}", field="instances"
        )
    return _to_matrix(instances, model, "instances", False, strict), False


def predict_response(model: LoadedModel, result: Prediction, single: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if single:
        out["prediction"] = result.labels[0]
        if result.probabilities is not None:
            out["probabilities"] = result.probabilities[0]
    else:
        out["predictions"] = result.labels
        if result.probabilities is not None:
            out["probabilities"] = result.probabilities
    out["classes"] = model.classes
    out["model_name"] = model.name
    out["model_version"] = model.version
    out["run_id"] = model.run_id
    return out


def parse_v2_infer(
    body: Any, model: LoadedModel, max_rows: int
) -> tuple[np.ndarray, str | None, set[str] | None]:
    """(rows, request id, requested output names or None for all) from a v2 infer request."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput("body must be an object with an 'inputs' list", field="inputs")
    inputs = body["inputs"]
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor, got {len(inputs)}", field="inputs")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput("inputs[0] must be an object", field="inputs[0]")
    datatype = tensor.get("datatype")
    if datatype not in V2_DTYPES:
        raise InvalidInput(
            f"inputs[0].datatype {datatype!r} is not supported; use one of {', '.join(V2_DTYPES)}",
            field="inputs[0].datatype",
        )
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)
    ):
        raise InvalidInput("inputs[0].shape must be [rows, features]", field="inputs[0].shape")
    rows, cols = shape
    if cols != model.n_features:
        raise InvalidInput(
            f"inputs[0].shape has {cols} features; the model expects {model.n_features}",
            field="inputs[0].shape",
        )
    if rows == 0:
        raise InvalidInput("inputs[0] has no rows", field="inputs[0].shape")
    if rows > max_rows:
        raise PayloadTooLarge(f"inputs[0] has {rows} rows; the limit is {max_rows}", field="inputs[0].shape")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput("inputs[0].data must be a list", field="inputs[0].data")
    try:
        flat = np.array(data)
        if flat.dtype.kind not in "fiu":
            raise ValueError("non-numeric")
        x = flat.astype(V2_DTYPES[datatype]).astype(np.float64).reshape(rows, cols)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"inputs[0].data must hold {rows * cols} numbers for shape {shape}", field="inputs[0].data"
        ) from None
    if not np.isfinite(x).all():
        raise InvalidInput("inputs[0].data must be finite", field="inputs[0].data")
    wanted = None
    if body.get("outputs") is not None:
        if not isinstance(body["outputs"], list):
            raise InvalidInput("outputs must be a list", field="outputs")
        wanted = {str(o.get("name")) for o in body["outputs"] if isinstance(o, dict)}
    request_id = body.get("id")
    return x, (str(request_id) if request_id is not None else None), wanted


def _v2_datatype(values: np.ndarray) -> str:
    kind = values.dtype.kind
    return "INT64" if kind in "iu" else "FP64" if kind == "f" else "BOOL" if kind == "b" else "BYTES"


def v2_response(
    model: LoadedModel, result: Prediction, request_id: str | None, wanted: set[str] | None
) -> dict[str, Any]:
    outputs = []
    if wanted is None or "predict" in wanted:
        labels = result.labels
        outputs.append(
            {
                "name": "predict",
                "shape": [len(labels)],
                "datatype": _v2_datatype(labels),
                "data": labels if labels.dtype.kind in "iufb" else labels.astype(str),
            }
        )
    if result.probabilities is not None and (wanted is None or "predict_proba" in wanted):
        proba = result.probabilities
        outputs.append(
            {"name": "predict_proba", "shape": list(proba.shape), "datatype": "FP64", "data": proba.ravel()}
        )
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    return response
