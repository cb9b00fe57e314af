"""The served OpenAPI document: every status a route returns, with the real error bodies, and request bodies
described from the served model (its feature names and count) and resolvable from the document's root.

Request bodies are parsed by hand (fast, with field-precise errors), so FastAPI does not see their models;
routes name a component (`body("PredictRequest")`) and `OpenAPIDocument` fills the components in.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from modelops.serving.http.tensors import NUMERIC
from modelops.serving.model import LoadedModel
from modelops.serving.schemas import ErrorBody, V2Error
from modelops.serving.service import ServingService, model_inputs, model_outputs

COMPONENTS = "#/components/schemas/"
FLOAT64_MAX = 1.7976931348623157e308
# A JSON number the server accepts as a feature value: finite in float64.
NUMBER: dict[str, Any] = {"type": "number", "minimum": -FLOAT64_MAX, "maximum": FLOAT64_MAX}
SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}

ERRORS: dict[int, str] = {
    400: "Malformed JSON, or a request that cannot be read (binary framing, unknown tensor names)",
    401: "Missing or wrong admin bearer token",
    403: "The admin API is disabled (no token configured), or the registry refused the server's credentials",
    404: "No such model, version or run",
    409: "Nothing to roll back to",
    413: "Body or row count over the limit",
    415: "A Content-Encoding the server does not decode",
    422: "Invalid input: the field is named",
    500: "The model failed on valid input",
    502: "The registry answered with an error",
    503: "No model is loaded yet, or the registry is unreachable",
}


def errors(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, with the route's error body."""
    model: type[BaseModel] = V2Error if v2 else ErrorBody
    return {status: {"model": model, "description": ERRORS[status]} for status in statuses}


def body(component: str, *, required: bool = True, binary: bool = False) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is the named component."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": COMPONENTS + component}}}
    extra: dict[str, Any] = {"requestBody": {"required": required, "content": content}}
    if binary:  # the binary tensor data extension: JSON header, then raw tensor bytes
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        extra["parameters"] = [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "Length of the JSON header when binary tensor data follows it.",
                "schema": {"type": "integer", "minimum": 0},
            }
        ]
    return extra


def predict_request(model: LoadedModel | None, max_rows: int) -> dict[str, Any]:
    row_list: dict[str, Any] = {"type": "array", "items": NUMBER, "minItems": 1}
    row_object: dict[str, Any] = {"type": "object", "additionalProperties": NUMBER, "minProperties": 1}
    if model is not None:
        n = model.n_features
        row_list = {**row_list, "minItems": n, "maxItems": n}
        row_object = {
            "type": "object",
            "properties": dict.fromkeys(model.columns, NUMBER),
            "required": list(model.columns),
            "additionalProperties": False,
        }
    row = {"anyOf": [row_list, row_object]}
    return {
        "title": "PredictRequest",
        "description": "Exactly one of `features` (one row) or `instances` (many rows). A row is a list of "
        "values in feature order, or an object {feature name: value}.",
        "oneOf": [
            {
                "type": "object",
                "properties": {"features": row},
                "required": ["features"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "instances": {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}
                },
                "required": ["instances"],
                "additionalProperties": False,
            },
        ],
    }


def infer_request(model: LoadedModel | None, max_rows: int) -> dict[str, Any]:
    inputs = model_inputs(model) if model is not None else []
    outputs = model_outputs(model) if model is not None else []
    name: dict[str, Any] = {"type": "string"}
    shape: dict[str, Any] = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    if inputs:
        name = {**name, "enum": [spec.name for spec in inputs]}
        shape = {**shape, "minItems": 2, "maxItems": 2}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": name,
            "shape": shape,
            "datatype": {"type": "string", "enum": list(NUMERIC)},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                "additionalProperties": SCALAR,
            },
            "data": {
                "type": "array",
                "description": f"Row-major values, flat or nested; at most {max_rows} rows.",
                "items": {"anyOf": [NUMBER, {"type": "array"}]},
            },
        },
    }
    output_name: dict[str, Any] = {"type": "string"}
    if outputs:
        output_name = {**output_name, "enum": [spec.name for spec in outputs]}
    requested = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": output_name,
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
                "additionalProperties": SCALAR,
            },
        },
    }
    return {
        "title": "V2InferRequest",
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
                "additionalProperties": SCALAR,
            },
            "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": max(1, len(inputs) or 1)},
            "outputs": {"type": "array", "items": requested},
        },
    }


def version_number(description: str) -> dict[str, Any]:
    """A registered version in a request body: a string of digits, or an integer (both within MLflow's int64)."""
    return {
        "anyOf": [
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
            {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
        ],
        "description": description,
    }


def rollout_start_request() -> dict[str, Any]:
    return {
        "title": "RolloutStartRequest",
        "type": "object",
        "required": ["version"],
        "properties": {
            "version": version_number("Registered version to roll out as the challenger."),
            "steps": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 100},
                "minItems": 1,
                "maxItems": 100,
                "contains": {"const": 100},
                "description": "Traffic percentages, one of them 100, taken in increasing order (default: the "
                "server's).",
            },
            "interval_s": {"type": "number", "minimum": 1, "maximum": 86400, "description": "Step length."},
            "mode": {"type": "string", "enum": ["canary", "shadow"]},
        },
        "additionalProperties": False,
    }


def rollout_action_request() -> dict[str, Any]:
    return {
        "title": "RolloutActionRequest",
        "type": "object",
        "properties": {
            "why": {"type": "string", "maxLength": 500, "description": "Recorded with the decision."}
        },
        "additionalProperties": False,
    }


def deploy_request() -> dict[str, Any]:
    return {
        "title": "DeployRequest",
        "description": "Exactly one of `version` and `run_id` (or the `run_id` query parameter).",
        "type": "object",
        "properties": {
            "version": version_number("Registered version to serve."),
            "run_id": {
                "type": "string",
                "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_\-]{0,255}$",
                "description": "Run whose model to serve (registered first if needed).",
            },
        },
        "additionalProperties": False,
    }


class OpenAPIDocument:
    """`app.openapi`: the document for the model served now, rebuilt when the served model changes."""

    def __init__(self, app: FastAPI, service: ServingService) -> None:
        self.app = app
        self.service = service
        self._cached: tuple[int, dict[str, Any]] | None = None

    def __call__(self) -> dict[str, Any]:
        model = self.service.store.current
        key = id(model)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        app = self.app
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        max_rows = self.service.settings.max_request_rows
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        # FastAPI documents a 422 with its own body on every route with parameters; ours never answer it
        # (plain string path parameters) or answer it with ErrorBody/V2Error, documented by the route.
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                answer = operation.get("responses", {}).get("422", {})
                if "HTTPValidationError" in str(answer):
                    del operation["responses"]["422"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["PredictRequest"] = predict_request(model, max_rows)
        schemas["V2InferRequest"] = infer_request(model, max_rows)
        schemas["DeployRequest"] = deploy_request()
        schemas["RolloutStartRequest"] = rollout_start_request()
        schemas["RolloutActionRequest"] = rollout_action_request()
        feedback = document.get("paths", {}).get("/feedback", {}).get("post")
        if feedback is not None:
            # as many labels as always fit the body limit: a label item is at most ~2 kB of JSON (a 128-character
            # request id, a 256-character label escaped as \uXXXX), so a batch the document allows is never a 413
            feedback["requestBody"] = copy.deepcopy(feedback["requestBody"])  # never the route's own dicts
            body = feedback["requestBody"]["content"]["application/json"]["schema"]
            batch = next(s for s in body["anyOf"] if s.get("type") == "array")
            batch["maxItems"] = max(1, min(batch["maxItems"], self.service.settings.max_body_bytes // 2048))
        self._cached = (key, document)
        return document
