"""Small HTTP client for the model server: what `modelops predict | deploy | rollback` send."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx

from modelops.errors import InvalidInput, ServerError, ServerUnreachable


def _call(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(
            f"model server at {url} is not reachable: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200]}}
    if response.status_code >= 400:
        error = body.get("error", {})
        raise ServerError(
            f"HTTP {response.status_code} from {url}: {error.get('message', response.text[:200])}"
        )
    return body


def prediction_body(server_url: str, features: str | None, file: Path | None) -> dict[str, Any]:
    """The /predict body: --features (comma list or JSON), --file (JSON body or CSV rows), else the model's example."""
    if features is not None:
        text = features.strip()
        try:
            value: Any = (
                json.loads(text) if text.startswith(("[", "{")) else [float(v) for v in text.split(",")]
            )
        except ValueError as exc:
            raise InvalidInput(
                f"--features must be numbers separated by commas or JSON: {exc}", field="features"
            ) from None
        return {"features": value}
    if file is not None:
        if not file.is_file():
            raise InvalidInput(f"file not found: {file}", field="file")
        raw = file.read_text()
        if file.suffix.lower() == ".csv":
            rows = list(csv.DictReader(io.StringIO(raw)))
            try:
                return {"instances": [{k: float(v) for k, v in row.items()} for row in rows]}
            except ValueError as exc:
                raise InvalidInput(f"{file} has a non-numeric value: {exc}", field="file") from None
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{file} is not valid JSON: {exc}", field="file") from None
        return body
    example = _call("GET", f"{server_url}/model").get("input_example")
    if not example:
        raise InvalidInput(
            "the served model has no input example; pass --features or --file", field="features"
        )
    return {"features": example}


def predict(server_url: str, body: dict[str, Any]) -> dict[str, Any]:
    return _call("POST", f"{server_url}/predict", json=body)


def deploy(server_url: str, token: str, version: str | None, run_id: str | None) -> dict[str, Any]:
    payload = {"version": version} if version is not None else {"run_id": run_id}
    return _call("POST", f"{server_url}/deploy", json=payload, headers={"Authorization": f"Bearer {token}"})


def rollback(server_url: str, token: str) -> dict[str, Any]:
    return _call("POST", f"{server_url}/rollback", headers={"Authorization": f"Bearer {token}"})


def rollout(
    server_url: str, token: str | None, action: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET /rollout (action "status") or POST /rollout/<action> with the admin token."""
    if action == "status":
        return _call("GET", f"{server_url}/rollout")
    return _call(
        "POST",
        f"{server_url}/rollout/{action}",
        json=body or {},
        headers={"Authorization": f"Bearer {token}"},
    )
