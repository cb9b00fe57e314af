"""Request context: request id, X-Model-Version, request metrics, and no stack trace ever leaks.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware): it wraps `send` only, so the body streams
through untouched and the hot path pays for one closure per request.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from modelops.serving import metrics
from modelops.serving.http.errors import error_body
from modelops.serving.store import ModelStore

log = logging.getLogger(__name__)

# the status the request metrics count a request under whose client left before its answer
CLIENT_CLOSED = 499
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RequestContext:
    """Adds X-Request-Id (the client's when well formed, else a new one) and X-Model-Version to every
    response, counts requests by route template and status, and turns an unhandled exception into a 500
    with a JSON body in the route's error shape."""

    def __init__(self, app: ASGIApp, store: ModelStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        if not REQUEST_ID.fullmatch(request_id):  # not match: `$` would let a trailing newline through
            request_id = os.urandom(16).hex().encode()  # as random as uuid4().hex, a quarter of its time
        # handlers read it as request.state.request_id (the routing key of rollouts, the prediction log's id)
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        state = _ResponseState()
        store = self.store

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status, state.started = message["status"], True
                headers = list(message.get("headers", []))
                if not any(k == b"x-model-version" for k, _ in headers):
                    model = store.current
                    headers.append((b"x-model-version", model.version.encode() if model else b""))
                headers.append((b"x-request-id", request_id))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing of ours went wrong
            state.status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not state.started:
                body = orjson.dumps(
                    error_body(scope.get("path", ""), "internal_error", "internal server error")
                )
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics.observe_request(
                endpoint, scope.get("method", ""), state.status, time.perf_counter() - start
            )


class _ResponseState:
    __slots__ = ("started", "status")

    def __init__(self) -> None:
        self.status = 500
        self.started = False
