"""Form bodies (application/x-www-form-urlencoded, parsed here: python-multipart is not a dependency) and the
predict form's values, turned into the body the simple API parses so its validation messages are the ones shown."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import numpy as np
from starlette.requests import Request

from modelops.errors import InvalidInput
from modelops.serving.http.body import read_body
from modelops.serving.model import LoadedModel
from modelops.serving.schemas import parse_predict

# The console's forms are small: a few short fields, or one row of features per line.
MAX_FORM_BYTES = 256 * 1024
MAX_FIELDS = 2000
SEPARATORS = re.compile(r"[\s,;]+")
INDEX = re.compile(r"\[(\d+)\]")


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The form's fields (first value of each name); none for a body that is not a URL-encoded form;
    PayloadTooLarge past `limit` bytes, InvalidInput for a form that cannot be decoded."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        # not a form (JSON, multipart, nothing): no fields, so no CSRF token either and the POST is refused
        return {}
    raw = await read_body(request, limit)  # the API's bounded reader: the same limits and errors
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the form cannot be read: {type(exc).__name__}", field="body") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def _number(token: str) -> Any:
    """A float when the token is one (so the API names non-finite values), else the text (named as not a
    number by the API's parser)."""
    try:
        return float(token)
    except ValueError:
        return token


def text_body(text: str, n_features: int) -> dict[str, Any]:
    """The API body for values separated by commas, spaces or newlines: one row when there are
    `n_features` values (or a count that does not fill whole rows, so the API says how many it expects),
    else one row per `n_features` values."""
    tokens = [t for t in SEPARATORS.split(text.strip()) if t]
    values = [_number(t) for t in tokens]
    if n_features > 0 and len(values) > n_features and len(values) % n_features == 0:
        return {"instances": [values[i : i + n_features] for i in range(0, len(values), n_features)]}
    return {"features": values}


def fields_body(form: dict[str, str], columns: list[str]) -> dict[str, Any]:
    """The API body for the named-fields view: one input per feature, named f0, f1, ..."""
    return {"features": {name: _number(form.get(f"f{i}", "").strip()) for i, name in enumerate(columns)}}


def parse_rows(body: dict[str, Any], model: LoadedModel, max_rows: int) -> np.ndarray:
    """The rows of an API body, validated by the API's own parser (InvalidInput names the field)."""
    rows, _ = parse_predict(body, model, max_rows, b"")
    return rows


def field_index(field: str | None, columns: list[str]) -> int | None:
    """Which feature an API error's field names (features[3], features.name, instances[0][3])."""
    if not field:
        return None
    if field.startswith("features."):
        name = field[len("features.") :]
        return columns.index(name) if name in columns else None
    indices = INDEX.findall(field)
    if field.startswith("features") and len(indices) == 1:
        return int(indices[0])
    if field.startswith("instances") and len(indices) == 2:
        return int(indices[1])
    return None


def example_text(model: LoadedModel) -> str:
    """The model's input example as the text the predict form starts with."""
    if not len(model.example):
        return ""
    return ", ".join(f"{float(v):.6g}" for v in np.asarray(model.example[0], dtype=np.float64).tolist())
