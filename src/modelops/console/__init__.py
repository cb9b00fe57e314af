"""The web console at /ui (issue 16): server-rendered pages (Jinja2, vendored htmx, plain CSS) on the model
server's own port. See docs/console.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from modelops.console.routes import Console
from modelops.serving.service import ServingService


def mount(app: FastAPI, service: ServingService) -> Console:
    """Add the console's routes to `app` (outside the OpenAPI document) and run its metrics sampler for the
    app's lifetime."""
    console = Console(service)
    app.router.routes.extend(console.routes().routes)
    app.state.console = console
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        # The sampler runs inside the app's own lifespan so it stops with it; without a lifespan (tests
        # through ASGITransport) the Live page samples on demand instead.
        async with original(application) as state:
            console.sampler.start()
            try:
                yield state
            finally:
                await console.sampler.stop()

    app.router.lifespan_context = lifespan
    return console
