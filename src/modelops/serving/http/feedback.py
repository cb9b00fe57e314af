"""POST /feedback (issue 15): being built; no routes yet."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["feedback"])
