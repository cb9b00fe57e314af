"""Dependencies the routers share: the service of the app and the admin bearer token."""

from __future__ import annotations

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
