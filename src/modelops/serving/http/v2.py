"""Open Inference Protocol v2 (KServe / Triton REST): health, metadata, and inference with binary tensors.

Errors on these routes are `{"error": "<message>"}` (serving/http/errors.py picks the shape by path).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from modelops import __version__
from modelops.serving.http.body import read_body
from modelops.serving.http.deps import get_service
from modelops.serving.http.errors import json_response
from modelops.serving.http.openapi import body, errors
from modelops.serving.http.v2_codec import HEADER_LENGTH, decode_infer, encode_infer
from modelops.serving.schemas import (
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2"])
SERVER_NAME = "modelops-model-server"
EXTENSIONS = ["binary_tensor_data"]
INFER_RESPONSES = {
    200: {
        "model": V2InferResponse,
        "description": "The outputs; with binary outputs, the JSON header (its length in the "
        "Inference-Header-Content-Length header) followed by the tensor bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **errors(400, 404, 413, 415, 422, 500, 503, v2=True),
}


# Inference first: routes are matched in order, and these are the busy ones.
async def infer(request: Request, name: str, version: str | None) -> Response:
    """Decode, predict (micro-batched), encode. Everything that can fail is checked before predicting."""
    service = get_service(request)
    settings = service.settings
    with service.batcher.arriving_request():
        raw = await read_body(request, settings.max_body_bytes)
        model = service.model(name, version)
        decoded = decode_infer(raw, request.headers.get(HEADER_LENGTH), model, settings.max_request_rows)
    if version is None:
        key = request.headers.get(settings.routing_header) or request.state.request_id
        model, result = await service.predict_routed(model, decoded.rows, request.state.request_id, key)
    else:  # a version asked for by number: that one answers (the champion, or a loaded challenger)
        result = await service.predict_pinned(model, decoded.rows, request.state.request_id)
    content, header_length = encode_infer(model, result, decoded)
    if header_length is None:
        return Response(content, media_type="application/json", headers={"x-model-version": model.version})
    headers = {"x-model-version": model.version, "inference-header-content-length": str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_model=V2InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=body("V2InferRequest", binary=True),
)
async def model_infer(request: Request, name: str) -> Response:
    return await infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference with one version",
    response_model=V2InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=body("V2InferRequest", binary=True),
)
async def model_version_infer(request: Request, name: str, version: str) -> Response:
    return await infer(request, name, version)


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Server liveness", response_model=V2Live)
async def server_live() -> Response:
    return json_response({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness",
    response_model=V2Ready,
    responses={503: {"model": V2Ready, "description": "No model is loaded yet"}},
)
async def server_ready(request: Request) -> Response:
    ready, _ = get_service(request).readiness()
    return json_response({"ready": ready}, 200 if ready else 503)


@router.get(
    "/models/{name}",
    summary="Model metadata",
    response_model=V2ModelMetadata,
    responses=errors(404, 503, v2=True),
)
async def model_metadata(request: Request, name: str) -> Response:
    service = get_service(request)
    return json_response(service.model_metadata(service.model(name)))


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata of one version",
    response_model=V2ModelMetadata,
    responses=errors(404, 503, v2=True),
)
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    service = get_service(request)
    return json_response(service.model_metadata(service.model(name, version)))


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    response_model=V2ModelReady,
    responses=errors(404, 503, v2=True),
)
async def model_ready(request: Request, name: str) -> Response:
    get_service(request).model(name)
    return json_response({"name": name, "ready": True})


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    response_model=V2ModelReady,
    responses=errors(404, 503, v2=True),
)
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    get_service(request).model(name, version)
    return json_response({"name": name, "ready": True})
