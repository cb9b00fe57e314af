"""Console sessions: a signed, expiring cookie and per-session CSRF tokens (hmac + hashlib, no extra library).

The cookie is stateless so that every worker and replica accepts it: `<payload>.<signature>`, both base64url,
the payload a small JSON object {"sub": who, "sid": random id, "exp": unix time}. The key comes from
`ui_session_secret`, or is derived from the admin token with HMAC (so replicas that share the token agree
without another secret); with neither, nobody can sign in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelops.settings import ServerSettings

COOKIE = "modelops_ui"
# Before sign-in the form still needs a CSRF token (login CSRF): it is tied to this short-lived cookie.
PRE_COOKIE = "modelops_ui_pre"
PRE_TTL_S = 3600
COOKIE_PATH = "/ui"
MAX_COOKIE_CHARS = 1024
KEY_CONTEXT = b"modelops console session key v1"


def session_key(settings: ServerSettings) -> bytes | None:
    """The signing key, or None when the console cannot sign anyone in."""
    if settings.ui_session_secret is not None and settings.ui_session_secret.get_secret_value():
        secret = settings.ui_session_secret.get_secret_value().encode()
    elif settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        secret = settings.admin_token.get_secret_value().strip().encode()
    else:
        return None
    # Never the secret itself: a leaked session key must not be the admin token.
    return hmac.new(secret, KEY_CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A signed-in console user: `who` is "admin" (the admin token) or "operator:<MLflow user>"."""

    who: str
    sid: str
    expires_at: float


class Sessions:
    """Issues and checks session cookies and CSRF tokens with one key."""

    def __init__(self, key: bytes | None, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.ttl_s = ttl_s
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def _sign(self, purpose: str, payload: bytes) -> str:
        assert self.key is not None
        return _b64(hmac.new(self.key, purpose.encode() + b"|" + payload, hashlib.sha256).digest())

    def _seal(self, purpose: str, data: dict[str, object]) -> str:
        payload = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(purpose, payload.encode())}"

    def _open(self, purpose: str, value: str | None) -> dict[str, object] | None:
        if self.key is None or not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(purpose, payload.encode())):
            return None
        try:
            data = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        expires = data.get("exp")
        if not isinstance(expires, (int, float)) or expires <= self.clock():
            return None
        return data

    # -- signed-in sessions -------------------------------------------------------------------------------
    def issue(self, who: str) -> tuple[str, Session]:
        """A new cookie value (and its session) for `who`; a fresh session id on every sign-in."""
        session = Session(who, secrets.token_urlsafe(16), float(int(self.clock()) + self.ttl_s))
        return self._seal("session", {"sub": who, "sid": session.sid, "exp": session.expires_at}), session

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie value; None when it is missing, forged, malformed or expired."""
        data = self._open("session", value)
        if data is None:
            return None
        who, sid, expires = data.get("sub"), data.get("sid"), data.get("exp")
        if not isinstance(who, str) or not isinstance(sid, str) or not isinstance(expires, (int, float)):
            return None
        return Session(who, sid, float(expires))

    # -- the pre-sign-in cookie ---------------------------------------------------------------------------
    def issue_pre(self) -> tuple[str, str]:
        """(cookie value, its id) for an anonymous visitor of the sign-in page."""
        sid = secrets.token_urlsafe(16)
        return self._seal("pre", {"sid": sid, "exp": int(self.clock()) + PRE_TTL_S}), sid

    def read_pre(self, value: str | None) -> str | None:
        data = self._open("pre", value)
        sid = data.get("sid") if data else None
        return sid if isinstance(sid, str) else None

    # -- CSRF -------------------------------------------------------------------------------------------------
    def csrf_token(self, sid: str) -> str:
        """The CSRF token of a session (or pre-sign-in) id: forms carry it, every POST is checked against it."""
        return self._sign("csrf", sid.encode())

    def csrf_ok(self, sid: str | None, token: str | None) -> bool:
        if self.key is None or not sid or not token:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.csrf_token(sid).encode())
