"""Tensor values of the Open Inference Protocol: JSON data or binary bytes to a typed numpy array, exactly.

Every value is checked against its declared datatype: out of range, fractional for an integer datatype,
non-finite, or not a number at all is InvalidInput (422) naming the element. Nothing is wrapped (INT8 300 is not
44), truncated (INT32 1.5 is not 1) or read as something else (JSON true is not 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelops.errors import InvalidInput, shown

# The datatypes a numeric model input accepts; each value is converted exactly, then to float64.
NUMERIC: dict[str, np.dtype[Any]] = {
    name: np.dtype(dt)
    for name, dt in {
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
DATATYPES = frozenset({*NUMERIC, "BOOL", "BYTES", "BF16"})


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- values --------------------------------------------------------------------------------------------
def _flatten(data: list[Any]) -> list[Any]:
    """The leaves of nested lists in row-major order (iterative: nesting depth costs no stack)."""
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _exact_values(data: list[Any], dt: np.dtype[Any], datatype: str, field: str) -> np.ndarray:
    """The slow path: check every value and convert it exactly (names the first bad one)."""
    flat = _flatten(data)
    integer = dt.kind in "iu"
    if integer:
        info = np.iinfo(dt)
        lo, hi = int(info.min), int(info.max)
    else:
        limit = float(np.finfo(dt).max)
    out: list[int | float] = []
    for i, value in enumerate(flat):
        where = f"{field}[{i}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(
                f"{where} must be a number, got {type(value).__name__} {shown(value)}", field=where
            )
        if isinstance(value, float) and not np.isfinite(value):
            raise InvalidInput(f"{where} must be finite, got {value}", field=where)
        if integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise InvalidInput(f"{where} must be an integer for {datatype}, got {value}", field=where)
                value = int(value)
            if not lo <= value <= hi:
                raise InvalidInput(
                    f"{where} is out of range for {datatype} ({lo} to {hi}), got {value}", field=where
                )
        else:
            value = float(value)  # an integer too large for a float is inf: out of range below
            if not abs(value) <= limit:
                raise InvalidInput(
                    f"{where} is out of range for {datatype} (magnitude up to {limit:g}), got {value}",
                    field=where,
                )
        out.append(value)
    return np.array(out, dtype=dt)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def json_values(
    data: Any, datatype: str, count: int, shape: list[int], field: str, strict: bool
) -> np.ndarray:
    """Typed flat values from explicit JSON data (flat or nested, row-major)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{field} must be a list of numbers", field=field)
    dt = NUMERIC[datatype]
    try:
        probe = np.array(data)
    except (ValueError, TypeError, RecursionError):  # ragged, or nested past numpy's 64 dimensions
        probe = None
    if probe is not None and probe.size != count and probe.dtype.kind in "iuf":
        raise InvalidInput(f"{field} holds {probe.size} values; shape {shape} needs {count}", field=field)
    exact_ints = probe is not None and probe.dtype.kind in "iu" and dt.kind in "iu"
    exact_floats = probe is not None and probe.dtype.kind in "iuf" and dt.kind == "f"
    # JSON booleans would be read as 1/0, floats for an integer datatype may be fractional or rounded: walk.
    if strict or not (exact_ints or exact_floats):
        values = _exact_values(data, dt, datatype, field)
        if values.size != count:
            raise InvalidInput(
                f"{field} holds {values.size} values; shape {shape} needs {count}", field=field
            )
        return values
    assert probe is not None
    flat = probe.reshape(-1)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        bad = (flat < int(info.min)) | (flat > int(info.max))
        if bad.any():
            i = _first_bad(bad)
            raise InvalidInput(
                f"{field}[{i}] is out of range for {datatype} ({info.min} to {info.max}), got {flat[i]}",
                field=f"{field}[{i}]",
            )
        return flat.astype(dt)
    values = flat.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        i = _first_bad(~finite)
        raise InvalidInput(f"{field}[{i}] must be finite, got {values[i]}", field=f"{field}[{i}]")
    if dt != np.float64:
        limit = float(np.finfo(dt).max)
        bad = np.abs(values) > limit
        if bad.any():
            i = _first_bad(bad)
            raise InvalidInput(
                f"{field}[{i}] is out of range for {datatype} (magnitude up to {limit:g}), got {values[i]}",
                field=f"{field}[{i}]",
            )
        return values.astype(dt)
    return values


def binary_values(chunk: bytes, datatype: str, count: int, shape: list[int], field: str) -> np.ndarray:
    dt = NUMERIC[datatype].newbyteorder("<")
    if len(chunk) != count * dt.itemsize:
        raise InvalidInput(
            f"{field}.parameters.binary_data_size is {len(chunk)} bytes; shape {shape} of {datatype} "
            f"needs {count * dt.itemsize}",
            field=f"{field}.parameters.binary_data_size",
        )
    values = np.frombuffer(chunk, dtype=dt)
    if dt.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            i = _first_bad(~finite)
            raise InvalidInput(f"{field}[{i}] must be finite, got {values[i]}", field=f"{field}[{i}]")
    return values
