"""Request parsing and response shapes of the simple API; response shapes of Open Inference Protocol v2.

Parsing is hand-written on purpose: it turns JSON straight into one float64 array with a single
numpy call on the happy path, and only walks the values to name the offending field when that
fails. The pydantic models below document the response shapes in the OpenAPI document.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelops.errors import InvalidInput, PayloadTooLarge, shown
from modelops.serving.model import LoadedModel, Prediction


# -- OpenAPI documentation models -------------------------------------------------------------------
# Responses only: request bodies are parsed by hand (below and in serving/http/v2_codec.py) and documented by
# serving/http/openapi.py with the served model's features.
class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. invalid_input.")
    message: str
    field: str | None = Field(description="The offending field, e.g. instances[3][1], when there is one.")


class ErrorBody(BaseModel):
    """Errors of our own API."""

    error: ErrorDetail


class V2Error(BaseModel):
    """Errors of /v2 routes, as the Open Inference Protocol defines them."""

    error: str


class PredictResponse(BaseModel):
    prediction: Any | None = None
    predictions: list[Any] | None = None
    probabilities: list[float | None] | list[list[float | None]] | None = Field(
        default=None, description="Class probabilities; null where the model's output is not finite."
    )
    classes: list[Any] | None = None
    model_name: str
    model_version: str
    run_id: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready or not ready")
    reason: str | None = None
    detail: str | None = Field(default=None, description="Full reason; with the admin token only.")
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    alias: str | None = None
    registry_warning: str | None = None
    registry_detail: str | None = Field(default=None, description="With the admin token only.")
    serving_warning: str | None = Field(
        default=None, description="Set while the last good copy serves instead of the alias' version."
    )
    serving_detail: str | None = Field(default=None, description="With the admin token only.")


class ModelInfo(BaseModel):
    name: str
    version: str
    run_id: str | None
    flavor: str
    features: list[str]
    classes: list[Any] | None
    metrics: dict[str, float]
    signature: dict[str, Any] | None
    input_example: list[float] | None
    loaded_at: float
    load_duration_s: float
    verify_duration_s: float
    alias: str


class VersionEntry(BaseModel):
    name: str
    version: str
    run_id: str | None
    source: str
    aliases: list[str]
    tags: dict[str, str]
    created_ms: int
    metrics: dict[str, float]


class Versions(BaseModel):
    model_name: str
    alias: str
    served_version: str | None
    versions: list[VersionEntry]


class AdminResult(BaseModel):
    action: str = Field(description="deploy or rollback")
    model_name: str
    alias: str
    previous_version: str | None
    version: str
    run_id: str | None


class RolloutDecision(BaseModel):
    at: float = Field(description="Unix time of the decision")
    step: int = Field(description="Index of the step it was made at")
    percent: int = Field(description="The challenger's share at that step")
    verdict: str = Field(description="start, pass, wait, fail, promote or abort")
    reason: str


class RolloutStatus(BaseModel):
    """The rollout this replica applies (from its last read of the registry); state idle without one."""

    model_config = ConfigDict(extra="allow")
    state: str = Field(description="idle, running, promoted or aborted")
    id: str | None = None
    version: str | None = Field(default=None, description="The challenger")
    champion_version: str | None = None
    mode: str | None = Field(default=None, description="canary or shadow")
    steps: list[int] | None = None
    step: int | None = None
    percent: int | None = Field(default=None, description="The challenger's share of traffic now")
    interval_s: float | None = None
    decisions: list[RolloutDecision] | None = None
    challenger_alias: str
    challenger_loaded: str | None = Field(description="The challenger version loaded here, if any")


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2MetadataTensor]
    outputs: list[V2MetadataTensor]


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, str | int | float | bool] | None = Field(
        default=None, description="binary_data_size when the tensor follows the JSON as binary data."
    )
    data: list[Any] | None = Field(default=None, description="Row-major values; absent for binary outputs.")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = Field(default=None, description="The request's id, when it sent one.")
    outputs: list[V2ResponseOutput]


# -- parsing ----------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(value: Any, field: str) -> None:
    if not _is_number(value):
        raise InvalidInput(
            f"{field} must be a number, got {type(value).__name__} {shown(value)}", field=field
        )
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


def _numeric(rows: list[Any], n_features: int) -> np.ndarray | None:
    """`rows` as an N x n_features array of numbers, or None when they are not that (named rows, bad input)."""
    try:
        x = np.array(rows)
    except (ValueError, TypeError):
        return None
    return x if x.ndim == 2 and x.shape[1] == n_features and x.dtype.kind in "fiu" else None


def _to_matrix(rows: list[Any], model: LoadedModel, field: str, single: bool, strict: bool) -> np.ndarray:
    # lists of numbers (the bulk case) convert in one step; named rows, booleans and bad input take the walk
    x = None if strict else _numeric(rows, model.n_features)
    if x is None:
        if not single:
            rows = [
                _named_row(r, model, f"{field}[{i}]") if isinstance(r, dict) else r
                for i, r in enumerate(rows)
            ]
        if strict:  # the body holds JSON booleans: walk it so true/false are named, not cast to 1/0
            _locate_error(rows, model, field, single)
        x = _numeric(rows, model.n_features)
    if x is None:
        _locate_error(rows, model, field, single)
        raise InvalidInput(f"{field} must be rows of {model.n_features} numbers", field=field)
    x = x.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        i, j = (int(v) for v in np.argwhere(~finite)[0])
        where = f"{field}[{j}]" if single else f"{field}[{i}][{j}]"
        raise InvalidInput(f"{where} must be finite", field=where)
    return x


# The documented bound of every number (1.7976931348623157e308), as the decimal it is written as: schema validators
# compare big JSON integers against that decimal, a hair below the binary float's true maximum.
FLOAT64_MAX = 1.7976931348623157e308
FLOAT64_MAX_INT = 17976931348623157 * 10**292


def parse_json_int(text: str) -> int | float:
    """A JSON integer for Python's json parser: exact while float64 can hold it near enough, else a float;
    past the documented bound, infinity (so validation names it as not finite instead of predicting on the
    largest float, which it rounds to)."""
    digits = len(text) - (text[0] == "-")
    if digits <= 19:
        return int(text)
    if digits > 400:
        return float(text)  # overflows to infinity
    value = int(text)
    if abs(value) > FLOAT64_MAX_INT:
        return math.inf if value > 0 else -math.inf
    return float(value)


def has_json_bool(raw: bytes, max_hits: int = 32) -> bool:
    """Whether `raw` (JSON) may hold a `true` or `false` (then the strict walk names it instead of it being cast to
    1 or 0). Never False when it does. Fast on bulk bodies: `r` and `s` occur in no JSON number, so a search for
    those single bytes (memchr) meets only keys and literals, and each hit is checked where it stands; past
    `max_hits` key letters, the plain search answers (`b"true" in raw` alone costs ~0.3 ms on a 1000-row body)."""
    for letter, word, offset in ((b"r", b"true", 1), (b"s", b"false", 3)):
        at = raw.find(letter)
        hits = 0
        while at != -1:
            if at >= offset and raw.startswith(word, at - offset):
                return True
            hits += 1
            if hits > max_hits:  # many keys hold the letter: the plain search, for this word only
                if word in raw:
                    return True
                break
            at = raw.find(letter, at + 1)
    return False


def parse_predict(body: Any, model: LoadedModel, max_rows: int, raw: bytes) -> tuple[np.ndarray, bool]:
    """(rows as float64 N x F, single-row request?) or InvalidInput naming the field."""
    x, single = _parse_predict(body, model, max_rows, raw)
    if x.size and float(np.abs(x).max()) >= FLOAT64_MAX:
        # A value at float64's very edge: it may have been written past the bound (a 309-digit integer, which
        # the fast parser rounds to the largest float). Read the body again, exactly, to tell (rare: slow is fine).
        import json

        x, single = _parse_predict(json.loads(raw, parse_int=parse_json_int), model, max_rows, raw)
    return x, single


def _parse_predict(body: Any, model: LoadedModel, max_rows: int, raw: bytes) -> tuple[np.ndarray, bool]:
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object with 'features' or 'instances'", field="body")
    has_features, has_instances = "features" in body, "instances" in body
    if has_features == has_instances:
        raise InvalidInput(
            "send exactly one of 'features' (one row) or 'instances' (many rows)", field="body"
        )
    if len(body) != 1:  # a typo ("feature", "instance") must not pass unnoticed
        unknown = next(k for k in body if k not in ("features", "instances"))
        raise InvalidInput(f"unknown field {unknown!r}: send only 'features' or 'instances'", field=unknown)
    strict = has_json_bool(raw)
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
