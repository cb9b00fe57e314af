"""Dependencies the routers share: the service of the app and the admin bearer token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from modelops.serving.http.errors import AdminDisabled, Unauthorized
from modelops.serving.service import ServingService

# Declares the bearer scheme in the OpenAPI document; auto_error=False so that our own errors answer.
bearer = HTTPBearer(auto_error=False, description="The server's MODELOPS_ADMIN_TOKEN.")


def get_service(request: Request) -> ServingService:
    """The ServingService of the app that received `request` (set by create_app)."""
    service: ServingService = request.app.state.service
    return service


def bearer_token(request: Request) -> str | None:
    """The bearer token of the Authorization header, if it has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def require_admin(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ServingService:
    """The service, for a request that carries the admin token; AdminDisabled (403) when no token is
    configured, Unauthorized (401) when it is missing or wrong."""
    service = get_service(request)
    if service.admin_token is None:
        raise AdminDisabled("the admin API is disabled: set MODELOPS_ADMIN_TOKEN on the server to enable it")
    if not service.is_admin(bearer_token(request)):
        raise Unauthorized("missing or wrong bearer token", field="Authorization")
    return service


def require_feedback(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ServingService:
    """The service, for a request with the feedback token or the admin token: labels train future models, so an
    anonymous client must not write them. AdminDisabled (403) when neither token is configured."""
    service = get_service(request)
    settings = service.settings
    if settings.feedback_token is None and service.admin_token is None:
        raise AdminDisabled(
            "POST /feedback is disabled: set MODELOPS_FEEDBACK_TOKEN (or MODELOPS_ADMIN_TOKEN) on the server"
        )
    token = bearer_token(request)
    expected = settings.feedback_token.get_secret_value().encode() if settings.feedback_token else None
    if token is not None and expected is not None and hmac.compare_digest(token.strip().encode(), expected):
        return service
    if not service.is_admin(token):
        raise Unauthorized("missing or wrong bearer token (feedback or admin)", field="Authorization")
    return service
