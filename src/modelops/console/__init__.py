"""The web console at /ui (issue 16): being built; mounts nothing yet."""

from __future__ import annotations

from typing import Any


def mount(app: Any, service: Any) -> None:
    """Add the console's routes to `app` (not built yet: adds none)."""
