"""Who may sign in to the console: the admin token holder, or the operator with the MLflow credential the
server holds for its admin API (checked against MLflow too, so a credential MLflow no longer accepts stops
working here)."""

from __future__ import annotations

import hmac
import logging

import httpx

from modelops.settings import ServerSettings

log = logging.getLogger(__name__)
MLFLOW_CHECK_TIMEOUT_S = 10.0


class SignInRefused(Exception):
    """A sign-in attempt that did not succeed; the message is safe to show."""


def admin_token_ok(settings: ServerSettings, token: str) -> bool:
    configured = settings.admin_token.get_secret_value().strip() if settings.admin_token else ""
    return bool(configured) and hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), configured.encode()
    )


def operator_enabled(settings: ServerSettings) -> bool:
    return bool(settings.registry_write_username and settings.registry_write_password)


async def check_operator(settings: ServerSettings, username: str, password: str) -> str:
    """The MLflow user name when `username`/`password` is the operator's credential and MLflow accepts it;
    SignInRefused otherwise. A wrong password never reaches MLflow."""
    expected_user = settings.registry_write_username or ""
    expected_password = (
        settings.registry_write_password.get_secret_value() if settings.registry_write_password else ""
    )
    user_ok = hmac.compare_digest(username.encode("utf-8", "replace"), expected_user.encode())
    password_ok = hmac.compare_digest(password.encode("utf-8", "replace"), expected_password.encode())
    if not (expected_user and expected_password and user_ok and password_ok):
        raise SignInRefused("wrong user name or password")
    url = settings.tracking_uri.rstrip("/") + "/api/2.0/mlflow/registered-models/get"
    if not url.startswith(("http://", "https://")):
        return expected_user  # a local store has no credentials to check
    try:
        async with httpx.AsyncClient(timeout=MLFLOW_CHECK_TIMEOUT_S) as client:
            response = await client.get(url, params={"name": settings.model_name}, auth=(username, password))
    except httpx.HTTPError as exc:
        log.warning("console sign-in: MLflow not reachable: %s", type(exc).__name__)
        raise SignInRefused("MLflow is not reachable to check the credential; try the admin token") from None
    if response.status_code != 200:
        log.warning("console sign-in: MLflow answered %s for the operator", response.status_code)
        raise SignInRefused(f"MLflow did not accept the credential (HTTP {response.status_code})")
    return expected_user
