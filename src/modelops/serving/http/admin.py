"""The admin API (bearer token): move the alias to a version or run, or back. Every replica follows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from modelops.errors import InvalidInput
from modelops.serving.http.body import load_json, read_body
from modelops.serving.http.deps import get_service, require_admin
from modelops.serving.http.errors import json_response
from modelops.serving.http.openapi import body, errors
from modelops.serving.schemas import AdminResult, RolloutStatus
from modelops.serving.service import ServingService

router = APIRouter(tags=["admin"])
ADMIN_ERRORS = (401, 403, 404, 409, 422, 502, 503)


def _text(value: Any, field: str) -> str | None:
    """A version or run id from the body: a string (or, for a version, an integer), or None when absent."""
    if value is None:
        return None
    if (
        isinstance(value, float) and value.is_integer() and 0 <= value < 1e18
    ):  # JSON Schema: 2.0 is an integer
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{field} must be a string", field=field)
    return str(value)


def _result(result: dict[str, Any]) -> Response:
    return json_response(result, headers={"x-model-version": result["version"]})


@router.post(
    "/deploy",
    summary="Move the alias to a version or run (every replica follows)",
    response_model=AdminResult,
    responses=errors(400, 413, 415, *ADMIN_ERRORS),
    openapi_extra=body("DeployRequest", required=False),
)
async def deploy(
    request: Request,
    service: Annotated[ServingService, Depends(require_admin)],
    run_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_\-]{0,255}$",
            description="Run whose model to serve; instead of a body.",
        ),
    ] = None,
) -> Response:
    raw = await read_body(request, service.settings.max_body_bytes)
    parsed = load_json(raw) if raw.strip() else {}
    if not isinstance(parsed, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    version = _text(parsed.get("version"), "version")
    # A field present in the body wins, even when falsy (""): it never falls back to the query parameter.
    if "run_id" in parsed:
        if run_id is not None:
            raise InvalidInput("send run_id in the body or the query, not both", field="run_id")
        run = _text(parsed["run_id"], "run_id")
    else:
        run = run_id
    return _result(await service.deploy(version, run))


@router.post(
    "/rollback",
    summary="Move the alias back to its previous holder",
    response_model=AdminResult,
    responses=errors(*ADMIN_ERRORS),
)
async def rollback(service: Annotated[ServingService, Depends(require_admin)]) -> Response:
    return _result(await service.rollback())


def _object(raw: bytes) -> dict[str, Any]:
    parsed = load_json(raw) if raw.strip() else {}
    if not isinstance(parsed, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    unknown = sorted(set(parsed) - {"version", "steps", "interval_s", "mode", "why"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
    return parsed


def _why(body: dict[str, Any]) -> str:
    why = body.get("why", "")
    if not isinstance(why, str) or len(why) > 500:
        raise InvalidInput("why must be a string of at most 500 characters", field="why")
    return why


@router.get(
    "/rollout",
    summary="The rollout this replica applies: challenger, step, share and decisions",
    response_model=RolloutStatus,
)
async def rollout_status(request: Request) -> Response:
    return json_response(get_service(request).rollout_status())


@router.post(
    "/rollout/start",
    summary="Start a progressive rollout of a version as the challenger",
    response_model=RolloutStatus,
    responses=errors(400, 413, 415, *ADMIN_ERRORS),
    openapi_extra=body("RolloutStartRequest"),
)
async def rollout_start(
    request: Request, service: Annotated[ServingService, Depends(require_admin)]
) -> Response:
    parsed = _object(await read_body(request, service.settings.max_body_bytes))
    version = _text(parsed.get("version"), "version")
    if version is None:
        raise InvalidInput("version is required", field="version")
    steps = parsed.get("steps")
    if isinstance(steps, list):  # JSON Schema counts 50.0 as an integer
        steps = [int(p) if isinstance(p, float) and p.is_integer() else p for p in steps]
    if steps is not None and (
        not isinstance(steps, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in steps)
    ):
        raise InvalidInput("steps must be a list of whole percentages", field="steps")
    interval = parsed.get("interval_s")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))):
        raise InvalidInput("interval_s must be a number of seconds", field="interval_s")
    mode = parsed.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise InvalidInput("mode must be canary or shadow", field="mode")
    return json_response(await service.rollout_start(version, steps, interval, mode))


@router.post(
    "/rollout/abort",
    summary="Abort the running rollout: the champion takes all traffic",
    response_model=RolloutStatus,
    responses=errors(400, 413, 415, *ADMIN_ERRORS),
    openapi_extra=body("RolloutActionRequest", required=False),
)
async def rollout_abort(
    request: Request, service: Annotated[ServingService, Depends(require_admin)]
) -> Response:
    parsed = _object(await read_body(request, service.settings.max_body_bytes))
    return json_response(await service.rollout_abort(_why(parsed)))


@router.post(
    "/rollout/promote",
    summary="Promote the challenger now: it becomes the champion",
    response_model=RolloutStatus,
    responses=errors(400, 413, 415, *ADMIN_ERRORS),
    openapi_extra=body("RolloutActionRequest", required=False),
)
async def rollout_promote(
    request: Request, service: Annotated[ServingService, Depends(require_admin)]
) -> Response:
    parsed = _object(await read_body(request, service.settings.max_body_bytes))
    return json_response(await service.rollout_promote(_why(parsed)))
