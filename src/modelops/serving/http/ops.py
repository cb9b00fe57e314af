"""Operations routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelops.serving import metrics
from modelops.serving.http.deps import bearer_token, get_service
from modelops.serving.http.errors import json_response
from modelops.serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz", summary="Liveness: the process answers", response_model=Health)
async def healthz() -> Response:
    return json_response({"status": "alive"})


@router.get(
    "/readyz",
    summary="Readiness: a model is loaded and warmed",
    description="Short reasons for anyone; with the admin bearer token, the full detail too.",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `reason` says why"}},
    # the token is optional here: without it the answer is just shorter
    openapi_extra={"security": [{}, {"HTTPBearer": []}]},
)
async def readyz(request: Request) -> Response:
    service = get_service(request)
    ready, body = service.readiness(detail=service.is_admin(bearer_token(request)))
    return json_response(body, 200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}, "description": "Metrics"}},
)
async def prometheus_metrics(request: Request) -> Response:
    get_service(request).refresh_drift_metrics()
    return Response(metrics.render(), media_type=PROMETHEUS_TEXT)


@router.get(
    "/drift",
    tags=["monitoring"],
    summary="Drift of served inputs from the training data, per feature",
    description=(
        "Two-sample Kolmogorov-Smirnov test of the last `window_rows` served rows against a sample of the "
        "training rows, per feature, Bonferroni-corrected so an unshifted window raises a false alarm with "
        "probability at most `false_alarm_rate`; PSI over the training deciles as an effect size."
    ),
    responses={503: {"description": "No model is loaded"}},
)
async def drift(request: Request) -> Response:
    return json_response(get_service(request).drift_report())
