"""Our own API: predictions on plain JSON rows, the loaded model, the registry's versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from modelops.serving.http.body import load_json, read_body
from modelops.serving.http.deps import get_service
from modelops.serving.http.errors import json_response
from modelops.serving.http.openapi import body, errors
from modelops.serving.schemas import ModelInfo, PredictResponse, Versions, parse_predict, predict_response
from modelops.training.card import render_markdown

router = APIRouter()


@router.post(
    "/predict",
    tags=["predict"],
    summary="Predict one row or many",
    response_model=PredictResponse,
    responses=errors(400, 413, 415, 422, 500, 503),
    openapi_extra=body("PredictRequest"),
)
async def predict(request: Request) -> Response:
    service = get_service(request)
    settings = service.settings
    with service.batcher.arriving_request():
        raw = await read_body(request, settings.max_body_bytes)
        parsed = load_json(raw)
        model = service.model()
        x, single = parse_predict(parsed, model, settings.max_request_rows, raw)
    key = request.headers.get(settings.routing_header) or request.state.request_id
    model, result = await service.predict_routed(model, x, request.state.request_id, key)
    return json_response(predict_response(model, result, single), headers={"x-model-version": model.version})


@router.get(
    "/model",
    tags=["model"],
    summary="The loaded version, its run, metrics and signature",
    response_model=ModelInfo,
    responses=errors(503),
)
async def model_info(request: Request) -> Response:
    return json_response(get_service(request).model_info())


@router.get(
    "/models/versions",
    tags=["model"],
    summary="Registry versions, newest first",
    response_model=Versions,
    responses=errors(422, 502, 503),
)
async def model_versions(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most versions to list.")] = 50,
) -> Response:
    answer = await get_service(request).versions(limit)
    return Response(answer, media_type="application/json")


@router.get(
    "/models/{version}/card",
    tags=["model"],
    summary="A version's model card (JSON, or Markdown with ?format=markdown), with its alias history",
    responses={
        **errors(404, 422, 502, 503),
        200: {"content": {"application/json": {}, "text/markdown": {}}, "description": "The card"},
    },
)
async def model_card(
    request: Request,
    version: Annotated[str, Path(pattern="^[0-9]{1,18}$", description="A registered version number.")],
    format: Annotated[str, Query(pattern="^(json|markdown)$", description="json or markdown")] = "json",
) -> Response:
    card = await get_service(request).card(version)
    if format == "markdown":
        return Response(render_markdown(card), media_type="text/markdown; charset=utf-8")
    return json_response(card)
