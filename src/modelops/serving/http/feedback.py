"""POST /feedback: labels for answered predictions, joined live in this worker and logged for the exact join.

A label reaches one worker of one replica; only the worker that made the answer can join it live, so
`joined` counts those and `unmatched` the rest (answered elsewhere, forgotten, or never made). Every label is
also written to the prediction log (`logged`), where the offline join finds it whoever answered.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from modelops.errors import InvalidInput
from modelops.monitoring.feedback import FeedbackJoin
from modelops.monitoring.predlog import FeedbackItem, PredictionLog
from modelops.serving.http.body import load_json, read_body
from modelops.serving.http.deps import require_feedback
from modelops.serving.http.errors import json_response
from modelops.serving.http.openapi import NUMBER, errors
from modelops.serving.service import ServingService

router = APIRouter(tags=["feedback"])

# The request-id rule of the RequestContext middleware: only ids it could have echoed can match an answer.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_ITEMS = 10_000
MAX_ROW = 1_000_000
MAX_LABEL_CHARS = 256
# orjson writes integers up to 64 bits; a larger label is kept as the float JSON readers would make of it
INT64 = 2**63


class FeedbackResult(BaseModel):
    joined: int = Field(
        description="Labels joined live to an answer this worker made (live metrics use them)"
    )
    unmatched: int = Field(description="Labels whose answer this worker does not hold (joined offline only)")
    logged: int = Field(description="Labels queued for the prediction log (0 when the log is off or full)")


ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "request_id": {
            "type": "string",
            "pattern": REQUEST_ID.pattern,
            "description": "The X-Request-Id of the answer (the client's, or the one the server sent back).",
        },
        "label": {
            "anyOf": [
                {"type": "string", "maxLength": MAX_LABEL_CHARS},
                NUMBER,
                {"type": "boolean"},
            ],
            "description": "The true class (or value) of the answered row.",
        },
        "row": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_ROW,
            "description": "Which row of a multi-row request the label is for [0].",
        },
    },
    "required": ["request_id", "label"],
    "additionalProperties": False,
}
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "FeedbackRequest",
    "description": "One label, or a batch of them (a JSON array).",
    "anyOf": [
        ITEM_SCHEMA,
        {"type": "array", "items": ITEM_SCHEMA, "minItems": 1, "maxItems": MAX_ITEMS},
    ],
}


def _label(value: Any, field: str) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -INT64 <= value < INT64 else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{field} must be finite, got {value}", field=field)
        return value
    if isinstance(value, str):
        if len(value) > MAX_LABEL_CHARS:
            raise InvalidInput(f"{field} is longer than {MAX_LABEL_CHARS} characters", field=field)
        return value
    raise InvalidInput(f"{field} must be a string, number or boolean", field=field)


def _item(value: Any, where: str) -> FeedbackItem:
    prefix = f"{where}." if where else ""
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{where or 'body'} must be an object with request_id and label", field=where or "body"
        )
    unknown = sorted(set(value) - {"request_id", "label", "row"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=f"{prefix}{unknown[0]}")
    request_id = value.get("request_id")
    # fullmatch: `$` would also let a trailing newline through, which the documented pattern refuses
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidInput(
            f"{prefix}request_id must be a request id (1-128 of A-Z a-z 0-9 . _ : -)",
            field=f"{prefix}request_id",
        )
    if "label" not in value or value["label"] is None:
        raise InvalidInput(f"{prefix}label is required", field=f"{prefix}label")
    label = _label(value["label"], f"{prefix}label")
    row = value.get("row", 0)
    if isinstance(row, float) and row.is_integer():  # JSON Schema counts 2.0 as an integer
        row = int(row)
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
        raise InvalidInput(f"{prefix}row must be an integer from 0 to {MAX_ROW}", field=f"{prefix}row")
    return FeedbackItem(request_id, label, row)


def parse_feedback(parsed: Any) -> list[FeedbackItem]:
    """The labels of a /feedback body: one object, or an array of 1 to MAX_ITEMS of them."""
    if isinstance(parsed, list):
        if not 1 <= len(parsed) <= MAX_ITEMS:
            raise InvalidInput(f"send 1 to {MAX_ITEMS} labels in one request", field="body")
        return [_item(value, f"[{i}]") for i, value in enumerate(parsed)]
    return [_item(parsed, "")]


@router.post(
    "/feedback",
    summary="Labels for answered predictions (joined by request id)",
    response_model=FeedbackResult,
    responses=errors(400, 401, 403, 413, 415, 422),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}
    },
)
async def feedback(
    request: Request, service: Annotated[ServingService, Depends(require_feedback)]
) -> Response:
    raw = await read_body(request, service.settings.max_body_bytes)
    items = parse_feedback(load_json(raw))
    join: FeedbackJoin = request.app.state.feedback
    joined, unmatched = join.join(items)
    log: PredictionLog | None = request.app.state.prediction_log
    logged = log.log_labels(service.settings.model_name, items) if log is not None else 0
    return json_response({"joined": joined, "unmatched": unmatched, "logged": logged})
