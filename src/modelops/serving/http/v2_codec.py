"""Open Inference Protocol v2 over HTTP: infer requests in, infer responses out, incl. binary tensors.

The binary tensor data extension (Triton's, which the Triton and KServe clients use by default): the body is the
JSON header followed by raw little-endian tensor bytes; `Inference-Header-Content-Length` gives the header's
length; an input with `parameters.binary_data_size` takes its bytes from the tail, in input order; the request's
`parameters.binary_data_output` and an output's `parameters.binary_data` ask for binary outputs.

Statuses (via serving/http/errors.py): 400 (BadRequest) when the request cannot be read as an infer request
for this model: binary framing, a tensor name the model does not have (inputs or requested outputs), an
extension we do not implement (shared memory, classification); 422 (InvalidInput) when it can be read but its
contents do not fit: wrong JSON types, an unsupported datatype, a shape or value count that does not match,
values out of range for their datatype, non-integral values for an integer datatype, non-finite values;
413 over the row limit. No value is ever wrapped, truncated or silently cast.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelops.errors import InvalidInput, PayloadTooLarge
from modelops.serving.http.body import load_json
from modelops.serving.http.errors import BadRequest
from modelops.serving.http.tensors import DATATYPES, NUMERIC, binary_values, is_int, json_values
from modelops.serving.model import LoadedModel, Prediction
from modelops.serving.schemas import has_json_bool
from modelops.serving.service import (
    ORJSON_OPTIONS,
    PREDICT_OUTPUT,
    PROBA_OUTPUT,
    input_names,
    label_datatype,
    output_names,
)

HEADER_LENGTH = "inference-header-content-length"
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
DIGITS = re.compile(r"^[0-9]{1,15}$")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: float64 rows for the model, the id to echo, the outputs to answer."""

    id: str | None
    rows: np.ndarray
    outputs: list[RequestedOutput]


# -- small validators ---------------------------------------------------------------------------------------
def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object", field=field)
    return value


def _parameters(value: Any, field: str) -> dict[str, Any]:
    """A $parameters object: names to a string, number or boolean."""
    if value is None:
        return {}
    params = _object(value, field)
    for key, item in params.items():
        if not isinstance(item, (str, int, float, bool)):
            raise InvalidInput(f"{field}.{key} must be a string, number or boolean", field=f"{field}.{key}")
    return params


def _flag(params: dict[str, Any], key: str, field: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{field}.{key} must be true or false", field=f"{field}.{key}")
    return value


def _no_shared_memory(params: dict[str, Any], field: str) -> None:
    if any(key in params for key in SHARED_MEMORY):
        raise BadRequest(
            f"{field}: the shared memory extension is not supported; send the data in the body", field=field
        )


# -- requests -------------------------------------------------------------------------------------------------
class _Binary:
    """The binary tail of a request, handed out to inputs in order."""

    def __init__(self, data: bytes, present: bool) -> None:
        self.data, self.present, self.offset = data, present, 0

    def take(self, size: int, field: str) -> bytes:
        if not self.present:
            raise BadRequest(
                f"{field} has binary_data_size but the request has no Inference-Header-Content-Length header",
                field=field,
            )
        if self.offset + size > len(self.data):
            raise BadRequest(
                f"{field}.parameters.binary_data_size ({size}) runs past the end of the body "
                f"({len(self.data) - self.offset} binary bytes left)",
                field=f"{field}.parameters.binary_data_size",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, _Binary]:
    """The JSON header and the binary tail, as `Inference-Header-Content-Length` divides the body."""
    if header_length is None:
        return raw, _Binary(b"", False)
    text = header_length.strip()
    if not DIGITS.match(text) or int(text) > len(raw):
        raise BadRequest(
            f"Inference-Header-Content-Length must be the byte length of the JSON header, at most the body's "
            f"{len(raw)} bytes; got {header_length!r}",
            field="Inference-Header-Content-Length",
        )
    size = int(text)
    return raw[:size], _Binary(raw[size:], True)


def _input_rows(
    tensor: Any, model: LoadedModel, max_rows: int, binary: _Binary, field: str, strict: bool
) -> np.ndarray:
    tensor = _object(tensor, field)
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{field}.datatype must be a string, e.g. 'FP64'", field=f"{field}.datatype")
    if datatype not in NUMERIC:
        kind = "is not supported by this model" if datatype in DATATYPES else "is not a protocol datatype"
        raise InvalidInput(
            f"{field}.datatype {datatype!r} {kind}; use one of {', '.join(NUMERIC)}",
            field=f"{field}.datatype",
        )
    shape = tensor.get("shape")
    n = model.n_features
    if not (isinstance(shape, list) and len(shape) == 2 and all(is_int(s) and s >= 0 for s in shape)):
        raise InvalidInput(f"{field}.shape must be [rows, {n}]", field=f"{field}.shape")
    rows, cols = shape
    if cols != n:
        raise InvalidInput(
            f"{field}.shape has {cols} features; the model expects {n}", field=f"{field}.shape"
        )
    if rows == 0:
        raise InvalidInput(f"{field} has no rows", field=f"{field}.shape")
    if rows > max_rows:
        raise PayloadTooLarge(f"{field} has {rows} rows; the limit is {max_rows}", field=f"{field}.shape")
    params = _parameters(tensor.get("parameters"), f"{field}.parameters")
    _no_shared_memory(params, field)
    count = rows * cols
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not is_int(size) or size < 0:
            raise InvalidInput(
                f"{field}.parameters.binary_data_size must be a byte count",
                field=f"{field}.parameters.binary_data_size",
            )
        if "data" in tensor:
            raise BadRequest(f"{field} has both data and binary_data_size; send one", field=f"{field}.data")
        values = binary_values(binary.take(size, field), datatype, count, shape, f"{field}.data")
    else:
        if "data" not in tensor:
            raise InvalidInput(f"{field} has no data (nor binary_data_size)", field=f"{field}.data")
        values = json_values(tensor["data"], datatype, count, shape, f"{field}.data", strict)
    return values.astype(np.float64).reshape(rows, cols)


def _requested_outputs(
    body: dict[str, Any], model: LoadedModel, binary_default: bool
) -> list[RequestedOutput]:
    available = output_names(model)
    requested = body.get("outputs")
    if not requested:  # absent, null or []: every output, with the request's default encoding
        return [RequestedOutput(name, binary_default) for name in available]
    if not isinstance(requested, list):
        raise InvalidInput("outputs must be a list", field="outputs")
    outputs: list[RequestedOutput] = []
    for j, item in enumerate(requested):
        field = f"outputs[{j}]"
        item = _object(item, field)
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{field}.name must be a string", field=f"{field}.name")
        if name not in available:
            raise BadRequest(
                f"{field}.name {name!r} is not an output of model {model.name!r}; its outputs are {available}",
                field=f"{field}.name",
            )
        if any(o.name == name for o in outputs):
            raise BadRequest(f"{field}.name {name!r} is requested twice", field=f"{field}.name")
        params = _parameters(item.get("parameters"), f"{field}.parameters")
        _no_shared_memory(params, field)
        if "classification" in params:
            raise BadRequest(f"{field}: the classification extension is not supported", field=field)
        outputs.append(
            RequestedOutput(name, _flag(params, "binary_data", f"{field}.parameters", binary_default))
        )
    return outputs


def decode_infer(raw: bytes, header_length: str | None, model: LoadedModel, max_rows: int) -> InferRequest:
    """An infer request for `model`, or the error that says what is wrong with it."""
    header, binary = split_body(raw, header_length)
    body = load_json(header)
    if not isinstance(body, dict):
        raise InvalidInput("body must be an object with an 'inputs' list", field="body")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id must be a string", field="id")
    params = _parameters(body.get("parameters"), "parameters")
    binary_default = _flag(params, "binary_data_output", "parameters", False)
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of tensors", field="inputs")
    names = input_names(model)
    for i, tensor in enumerate(inputs):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"inputs[{i}].name must be a string", field=f"inputs[{i}].name")
        if name not in names:
            raise BadRequest(
                f"inputs[{i}].name {name!r} is not an input of model {model.name!r}; its inputs are {names}",
                field=f"inputs[{i}].name",
            )
    if len(inputs) != len(names):
        raise InvalidInput(f"inputs must hold exactly the tensors {names}, got {len(inputs)}", field="inputs")
    strict = has_json_bool(header)
    rows = _input_rows(inputs[0], model, max_rows, binary, "inputs[0]", strict)
    if binary.offset != len(binary.data):
        raise BadRequest(
            f"{len(binary.data) - binary.offset} bytes after the JSON header belong to no input",
            field="body",
        )
    return InferRequest(request_id, rows, _requested_outputs(body, model, binary_default))


# -- responses ------------------------------------------------------------------------------------------------
def _to_bytes(values: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = [str(v).encode("utf-8", "replace") for v in values.ravel()]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    if datatype == "BOOL":
        return values.astype(np.uint8).tobytes()
    return values.astype("<i8" if datatype == "INT64" else "<f8").tobytes()


def _to_json(values: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [str(v) for v in values.ravel()]
    if datatype == "INT64" and values.dtype != np.int64:
        return values.astype(np.int64).ravel()
    return np.ascontiguousarray(values).ravel()  # orjson writes numpy arrays natively (NaN as null)


def encode_infer(model: LoadedModel, result: Prediction, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, the length of its JSON header."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in request.outputs:
        if output.name == PREDICT_OUTPUT:
            values, datatype = result.labels, label_datatype(result.labels.dtype.kind)
        elif output.name == PROBA_OUTPUT and result.probabilities is not None:
            values, datatype = result.probabilities, "FP64"
        else:  # a classifier without predict_proba: its metadata promised what it cannot give
            raise BadRequest(f"model {model.name!r} produced no {output.name!r} output", field="outputs")
        entry: dict[str, Any] = {"name": output.name, "shape": list(values.shape), "datatype": datatype}
        if output.binary:
            chunk = _to_bytes(values, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json(values, datatype)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = orjson.dumps(response, option=ORJSON_OPTIONS)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
