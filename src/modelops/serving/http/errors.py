"""Errors to HTTP: the one status table, the error bodies, and the exception handlers.

Two body shapes: our own API answers `{"error": {"code", "message", "field"}}`; /v2 routes answer
`{"error": "<message>"}` as the Open Inference Protocol (and the Triton and KServe clients) expect.

A few errors exist only because of HTTP (framing, media types, the admin bearer token); they live here,
as subclasses of the domain tree so the same table maps them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelops.errors import (
    AliasNotFound,
    ConfigError,
    InvalidInput,
    ModelError,
    ModelLoadError,
    ModelNotReady,
    ModelOpsError,
    NothingToRollBack,
    PayloadTooLarge,
    RegistryError,
    RegistryForbidden,
    RegistryUnavailable,
    RolloutConflict,
    Unreachable,
    VersionNotFound,
)
from modelops.serving.service import ORJSON_OPTIONS

log = logging.getLogger(__name__)


class BadRequest(InvalidInput):
    """The request cannot be read as what the route expects (framing, unknown tensor names): 400."""

    code = "bad_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"


class UnsupportedMediaType(InvalidInput):
    """A Content-Encoding we do not decode (gzip, deflate, ...): 415."""

    code = "unsupported_media_type"


class Unauthorized(ModelOpsError):
    """Missing or wrong admin bearer token: 401."""

    code = "unauthorized"


class AdminDisabled(ModelOpsError):
    """The admin API is off because no token is configured: 403."""

    code = "admin_disabled"


# The one table from errors to HTTP status codes (most specific first).
ERROR_STATUS: list[tuple[type[ModelOpsError], int]] = [
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (BadRequest, 400),
    (InvalidInput, 422),
    (Unauthorized, 401),
    (AdminDisabled, 403),
    (VersionNotFound, 404),
    (NothingToRollBack, 409),
    (RolloutConflict, 409),
    (AliasNotFound, 503),
    (RegistryUnavailable, 503),
    (Unreachable, 503),
    (RegistryForbidden, 403),
    (RegistryError, 502),
    (ModelNotReady, 503),
    (ModelLoadError, 422),
    (ModelError, 500),
    (ConfigError, 500),
]
# Statuses Starlette raises itself (routing), by code for our body.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def status_for(exc: ModelOpsError) -> int:
    return next((status for kind, status in ERROR_STATUS if isinstance(exc, kind)), 500)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=ORJSON_OPTIONS), status, headers, media_type="application/json"
    )


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The error body for a route: the protocol's on /v2, ours elsewhere."""
    if is_v2(path):
        return {"error": message}
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return json_response(error_body(request.url.path, code, message, field), status, headers)


async def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelOpsError)
    headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(request, status_for(exc), exc.code, exc.message, exc.field, headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own validation (query and path parameters): the first problem, named by its field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(request, 400, "malformed_json", "malformed JSON", "body")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "body"
    message = f"{field}: {first.get('msg', 'invalid')}"
    return error_response(request, 422, "invalid_input", message, field)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A 500 in the route's error shape, without any detail of the exception."""
    return error_response(request, 500, "internal_error", "internal server error")


async def http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405 with its Allow header) in the route's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(
        request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
    )


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(ModelOpsError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # an unexpected exception on a route behind FastAPI's stack: Starlette's server-error layer answers with this
    # (not its plain-text page) and re-raises it to RequestContext, which logs it and counts the 500
    app.add_exception_handler(500, internal_error)
