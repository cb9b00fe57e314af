"""The prediction routes, dispatched before FastAPI's router.

FastAPI's router tries every route in turn, solves the endpoint's dependencies and runs its own exception
middleware on each request; for the routes that carry almost all traffic that is a large share of a single-row
request (issue 12). Their endpoints take only the request and path strings and validate everything themselves, so
this ASGI layer matches them first (exact path, or the route's own compiled pattern), calls the same endpoint and
maps domain errors with the same handler: the same answers, documented by the same routes in the OpenAPI
document. Everything else goes on to FastAPI untouched.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from modelops.errors import ModelOpsError
from modelops.serving.http.errors import domain_error

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class FastRoutes:
    """Matches POST requests to `routes` and calls their endpoints directly (see the module's docstring)."""

    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self.exact: dict[str, APIRoute] = {}
        self.patterned: list[tuple[re.Pattern[str], APIRoute]] = []
        for route in routes:
            if route.param_convertors:
                self.patterned.append((route.path_regex, route))
            else:
                self.exact[route.path] = route

    def match(self, path: str) -> tuple[APIRoute, dict[str, str]] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for regex, candidate in self.patterned:
            found = regex.match(path)
            if found is not None:
                return candidate, found.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        matched = self.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, params = matched
        scope["route"] = route  # the request metrics are labelled by the route's template, as FastAPI's
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response: Response = await route.endpoint(request, **params)
        except ModelOpsError as exc:
            response = await domain_error(request, exc)
        await response(scope, receive, send)


def prediction_routes(routes: list[Any], paths: tuple[str, ...]) -> list[APIRoute]:
    """The POST routes among `routes` whose template is one of `paths`."""
    return [r for r in routes if isinstance(r, APIRoute) and r.path in paths and "POST" in (r.methods or ())]
