"""Rendering: the Jinja environment, security headers, and the shaping of registry data for templates."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_TYPES = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "LICENSE-htmx": "text/plain; charset=utf-8",
}
# No inline script or style anywhere: htmx is configured by a meta tag, charts are styled by classes.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
KEY_METRICS = ("roc_auc", "accuracy", "f1", "log_loss", "precision", "recall", "r2", "rmse")
AWAITING_TAG = "modelops.awaiting_approval"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["num"] = num
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:.1f} ms"
    env.filters["ratio"] = lambda v: "-" if v is None else f"{v * 100:.1f} %"
    env.filters["pct"] = lambda v: "-" if v is None else f"{v * 100:.1f} %"
    return env


def secure(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return secure(HTMLResponse(text, status, headers))


def static_file(name: str) -> Response | None:
    kind = STATIC_TYPES.get(name)
    if kind is None:
        return None
    response = Response((STATIC / name).read_bytes(), media_type=kind)
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["cache-control"] = "public, max-age=3600"
    return response


def when(value: float | int | None, millis: bool = False) -> str:
    """A unix time (seconds, or milliseconds with millis=True) as UTC text."""
    if value is None or value == 0:
        return "-"
    seconds = float(value) / (1000 if millis else 1)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def version_rows(
    body: dict[str, Any],
    champion_alias: str,
    challenger_alias: str,
    tracking_uri: str,
    rolling_out: str | None = None,
) -> list[dict[str, Any]]:
    """The versions table: badges, key metrics first, links to the run in MLflow and to the model card.

    `rolling_out` is the challenger of the rollout running now (None: none runs). Only that version gets the
    challenger badge: when a rollout ends the challenger alias stays on the version last rolled out (removing
    an alias needs MANAGE on the model), so the alias alone only earns a muted "last challenger"."""
    served = body.get("served_version")
    mlflow_ui = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None
    rows = []
    for entry in body.get("versions", []):
        aliases = list(entry.get("aliases") or [])
        tags = entry.get("tags") or {}
        metrics: dict[str, float] = entry.get("metrics") or {}
        key = [(k, metrics[k]) for k in KEY_METRICS if k in metrics][:4]
        rest = sorted((k, v) for k, v in metrics.items() if k not in dict(key))
        badges = []
        if champion_alias in aliases:
            badges.append(("champion", champion_alias))
        if rolling_out is not None and str(entry.get("version")) == rolling_out:
            badges.append(("challenger", challenger_alias))
        elif challenger_alias in aliases:
            badges.append(("last-challenger", f"last {challenger_alias}"))
        if tags.get(AWAITING_TAG) == "true":
            badges.append(("awaiting", "awaiting approval"))
        if entry.get("version") == served:
            badges.append(("served", "served here"))
        other = [a for a in aliases if a not in (champion_alias, challenger_alias)]
        run_id = entry.get("run_id")
        rows.append(
            {
                "version": str(entry.get("version")),
                "created": when(entry.get("created_ms"), millis=True),
                "run_id": run_id,
                "run_url": f"{mlflow_ui}/#/runs/{run_id}" if mlflow_ui and run_id else None,
                "card_url": f"/models/{entry.get('version')}/card?format=markdown" if run_id else None,
                "key_metrics": key,
                "other_metrics": rest,
                "badges": badges,
                "other_aliases": other,
                "is_champion": champion_alias in aliases,
            }
        )
    return rows
