"""The console's pages and actions. Every POST needs a signed-in session (or, for sign-in, the pre-sign-in
cookie), its CSRF token and a same-origin Origin/Referer; read pages need a session unless `ui_public_read`.
Domain errors are shown inline on the page that caused them, with their HTTP status; never a 500."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modelops.console import pages
from modelops.console.forms import example_text, field_index, fields_body, parse_rows, read_form, text_body
from modelops.console.live import RecentPredictions, Sampler, charts
from modelops.console.session import (
    COOKIE,
    COOKIE_PATH,
    PRE_COOKIE,
    PRE_TTL_S,
    Session,
    Sessions,
    session_key,
)
from modelops.console.signin import SignInRefused, admin_token_ok, check_operator, operator_enabled
from modelops.errors import InvalidInput, ModelOpsError
from modelops.serving import metrics
from modelops.serving.http.errors import status_for
from modelops.serving.service import ServingService

log = logging.getLogger(__name__)
VERSION = re.compile(r"^[0-9]{1,18}$")
NEXT = re.compile(r"^/ui(/[A-Za-z0-9_\-/]*)?$")
VERSIONS_LIMIT = 100
AUDIT_ROWS = 50
CONSOLE_MAX_ROWS = 100  # rows one console prediction may carry (the page shows each)
WRONG_SIGNIN_DELAY_S = 0.5
STEPS = re.compile(r"^\s*\d{1,3}(\s*[, ]\s*\d{1,3})*\s*$")
ROLLOUT_MODES = ("canary", "shadow")
# the start form's fields, as their labels name them (an error names the field it is about)
ROLLOUT_FIELDS = {"version": "Version", "steps": "Steps", "interval_s": "Seconds per step", "mode": "Mode"}
# after a rollout action, how long to wait for this process's view of the rollout (its next poll, woken at
# once by the action) so that the page it redirects to shows the new state
ROLLOUT_APPLIED_WAIT_S = 3.0
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page: a signed-in session, or nobody (public read-only pages)."""

    session: Session | None
    csrf: str | None

    @property
    def signed_in(self) -> bool:
        return self.session is not None


class Forbidden(Exception):
    """A POST that fails the CSRF or origin check."""


class Console:
    def __init__(self, service: ServingService) -> None:
        self.service = service
        self.settings = service.settings
        self.sessions = Sessions(session_key(self.settings), self.settings.ui_session_ttl_s)
        self.env = pages.environment()
        self.sampler = Sampler(metrics.render)
        self.recent = RecentPredictions()
        self.challenger_alias = str(getattr(self.settings, "challenger_alias", "challenger"))
        service.add_prediction_listener(self.recent)

    # -- plumbing ---------------------------------------------------------------------------------------
    def routes(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        get: list[tuple[str, Handler]] = [
            ("/ui", self.home),
            ("/ui/", self.home),
            ("/ui/static/{name}", self.static),
            ("/ui/signin", self.signin_page),
            ("/ui/versions", self.versions_page),
            ("/ui/versions/{version}/deploy", self.deploy_page),
            ("/ui/rollback", self.rollback_page),
            ("/ui/predict", self.predict_page),
            ("/ui/live", self.live_page),
            ("/ui/live/panel", self.live_panel),
        ]
        post: list[tuple[str, Handler]] = [
            ("/ui/signin", self.signin),
            ("/ui/signout", self.signout),
            ("/ui/versions/{version}/deploy", self.deploy),
            ("/ui/rollback", self.rollback),
            ("/ui/predict", self.predict),
            ("/ui/rollout/{action}", self.rollout_action),
        ]
        for path, handler in get:
            router.add_api_route(path, self._guard(handler), methods=["GET"])
        for path, handler in post:
            router.add_api_route(path, self._guard(handler), methods=["POST"])
        return router

    def _guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Forbidden as exc:
                return self.render(request, "error.html", {"title": "Refused", "message": str(exc)}, 403)
            except ModelOpsError as exc:
                return self.render(
                    request, "error.html", {"title": "Error", "message": exc.message}, status_for(exc)
                )

        endpoint.__name__ = f"console_{handler.__name__}"
        return endpoint

    def viewer(self, request: Request) -> Viewer:
        session = self.sessions.read(request.cookies.get(COOKIE))
        return Viewer(session, self.sessions.csrf_token(session.sid) if session else None)

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        status: int = 200,
        viewer: Viewer | None = None,
    ) -> Response:
        viewer = viewer or self.viewer(request)
        model = self.service.store.current
        page = self.env.get_template(template).render(
            viewer=viewer,
            csrf=viewer.csrf,
            served=model,
            model_name=self.settings.model_name,
            alias=self.settings.model_alias,
            has_rollout=hasattr(self.service, "rollout_status"),
            path=request.url.path,
            **context,
        )
        return pages.html(page, status)

    def _https(self, request: Request) -> bool:
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return forwarded == "https" or request.url.scheme == "https"

    def _same_origin(self, request: Request) -> None:
        """Refuse a POST whose Origin (or, without one, Referer) is another site; CSRF tokens are checked too,
        this is defence in depth for browsers that send these headers."""
        host = request.headers.get("host", "")
        source = request.headers.get("origin") or request.headers.get("referer")
        if source is None:
            return
        if source == "null" or urllib.parse.urlsplit(source).netloc != host:
            raise Forbidden("this form was not sent from this console (cross-origin request refused)")

    async def _post(self, request: Request) -> tuple[Viewer, dict[str, str]]:
        """The signed-in viewer and the form of a POST that passed the origin, session and CSRF checks."""
        self._same_origin(request)
        viewer = self.viewer(request)
        if viewer.session is None:
            raise Forbidden("sign in first (your session may have expired)")
        form = await read_form(request)
        if not self.sessions.csrf_ok(viewer.session.sid, form.get("csrf")):
            raise Forbidden("the form's security token is missing or stale: reload the page and try again")
        return viewer, form

    def _read_gate(self, request: Request) -> Viewer | Response:
        """The viewer of a read-only page, or a redirect to sign-in when reading needs a session."""
        viewer = self.viewer(request)
        if viewer.signed_in or self.settings.ui_public_read:
            return viewer
        target = "/ui/signin"
        if NEXT.match(request.url.path) and request.url.path not in ("/ui", "/ui/"):
            target += "?" + urllib.parse.urlencode({"next": request.url.path})
        if request.headers.get("hx-request") == "true":
            # a polled fragment after the session expired: htmx then loads the sign-in page as a whole page
            return pages.html("", 200, headers={"hx-redirect": "/ui/signin"})
        return RedirectResponse(target, 303)

    # -- static, home -----------------------------------------------------------------------------------
    async def static(self, request: Request) -> Response:
        found = pages.static_file(str(request.path_params.get("name", "")))
        return found or pages.html("not found", 404)

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/ui/versions", 303)

    # -- sign in and out --------------------------------------------------------------------------------
    async def signin_page(self, request: Request) -> Response:
        return self._signin_form(request, None, 200)

    def _signin_form(self, request: Request, error: str | None, status: int) -> Response:
        next_path = request.query_params.get("next", "")
        context: dict[str, Any] = {
            "error": error,
            "enabled": self.sessions.enabled,
            "operator": operator_enabled(self.settings),
            "operator_username": self.settings.registry_write_username or "",
            "next": next_path if NEXT.match(next_path) else "",
            "public_read": self.settings.ui_public_read,
            "signed_out": request.query_params.get("signed_out") == "1",
            "title": "Sign in",
        }
        if not self.sessions.enabled:
            return self.render(request, "signin.html", {**context, "pre_csrf": None}, status)
        pre_value, pre_sid = self.sessions.issue_pre()
        response = self.render(
            request, "signin.html", {**context, "pre_csrf": self.sessions.csrf_token(pre_sid)}, status
        )
        self._set_cookie(request, response, PRE_COOKIE, pre_value, PRE_TTL_S)
        return response

    async def signin(self, request: Request) -> Response:
        self._same_origin(request)
        if not self.sessions.enabled:
            raise Forbidden("sign-in is disabled: the server has no admin token or session secret")
        form = await read_form(request)
        pre_sid = self.sessions.read_pre(request.cookies.get(PRE_COOKIE))
        if not self.sessions.csrf_ok(pre_sid, form.get("csrf")):
            raise Forbidden("the sign-in form's security token is missing or stale: reload the page")
        try:
            if form.get("method") == "operator":
                if not operator_enabled(self.settings):
                    raise SignInRefused("operator sign-in is not configured on this server")
                who = "operator:" + await check_operator(
                    self.settings, form.get("username", ""), form.get("password", "")
                )
            elif admin_token_ok(self.settings, form.get("token", "")):
                who = "admin"
            else:
                raise SignInRefused("wrong admin token")
        except SignInRefused as exc:
            await asyncio.sleep(WRONG_SIGNIN_DELAY_S)  # slows guessing; tokens are long anyway
            return self._signin_form(request, str(exc), 401)
        value, _ = self.sessions.issue(who)
        next_path = form.get("next", "")
        response = RedirectResponse(next_path if NEXT.match(next_path) else "/ui/versions", 303)
        self._set_cookie(request, response, COOKIE, value, self.settings.ui_session_ttl_s)
        response.delete_cookie(PRE_COOKIE, path=COOKIE_PATH)
        log.info("console: %s signed in", who)
        return response

    async def signout(self, request: Request) -> Response:
        viewer, _ = await self._post(request)
        response = RedirectResponse("/ui/signin?signed_out=1", 303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        log.info("console: %s signed out", viewer.session.who if viewer.session else "?")
        return response

    def _set_cookie(self, request: Request, response: Response, name: str, value: str, ttl_s: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=ttl_s,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self._https(request),
        )

    # -- versions, deploy, rollback ---------------------------------------------------------------------
    async def _versions(self) -> tuple[list[dict[str, Any]], str | None]:
        """The versions table, or an error message in its place."""
        try:
            body = orjson.loads(await self.service.versions(VERSIONS_LIMIT))
        except ModelOpsError as exc:
            return [], exc.message
        rollout = self._rollout_status()
        rolling_out = rollout.get("version") if rollout and rollout.get("state") == "running" else None
        rows = pages.version_rows(
            body,
            self.settings.model_alias,
            self.challenger_alias,
            self.settings.tracking_uri,
            str(rolling_out) if rolling_out is not None else None,
        )
        return rows, None

    def _rollout_status(self) -> dict[str, Any] | None:
        """This process's view of the rollout (from its last poll of the registry), None when unknown."""
        rollout_status = getattr(self.service, "rollout_status", None)
        if rollout_status is None:
            return None
        try:
            status: dict[str, Any] = rollout_status()
        except ModelOpsError as exc:
            return {"state": "unknown", "error": exc.message}
        return status

    async def versions_page(self, request: Request) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        rows, error = await self._versions()
        notice = None
        done, version, previous = (request.query_params.get(k, "") for k in ("done", "version", "from"))
        if done in ("deploy", "rollback") and VERSION.match(version):
            verb = "Deployed" if done == "deploy" else "Rolled back to"
            notice = f"{verb} v{version}" + (f" (was v{previous})." if VERSION.match(previous) else ".")
        context = {"rows": rows, "error": error, "notice": notice, "title": "Versions"}
        return self.render(request, "versions.html", context, viewer=viewer)

    async def deploy_page(self, request: Request) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        version = str(request.path_params["version"])
        if not VERSION.match(version):
            raise InvalidInput("version must be a registered version number, e.g. '3'", field="version")
        context = {"title": f"Deploy v{version}", "version": version, "error": None}
        return self.render(request, "deploy.html", context, viewer=viewer)

    async def deploy(self, request: Request) -> Response:
        viewer, _ = await self._post(request)
        version = str(request.path_params["version"])
        try:
            if not VERSION.match(version):
                raise InvalidInput("version must be a registered version number, e.g. '3'", field="version")
            result = await self.service.deploy(version, None)
        except ModelOpsError as exc:
            context = {"title": f"Deploy v{version}", "version": version, "error": exc.message}
            return self.render(request, "deploy.html", context, status_for(exc), viewer)
        log.info("console: %s deployed v%s", viewer.session.who if viewer.session else "?", version)
        return self._done("deploy", result)

    def _done(self, action: str, result: dict[str, Any]) -> Response:
        query = {"done": action, "version": str(result.get("version", ""))}
        if result.get("previous_version"):
            query["from"] = str(result["previous_version"])
        return RedirectResponse("/ui/versions?" + urllib.parse.urlencode(query), 303)

    async def rollback_page(self, request: Request) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        target, error = None, None
        try:
            target = await self.service.registry_call(self.service.registry.previous_version)
        except ModelOpsError as exc:
            error = exc.message
        context = {"title": "Roll back", "target": target, "error": error}
        return self.render(request, "rollback.html", context, viewer=viewer)

    async def rollback(self, request: Request) -> Response:
        viewer, _ = await self._post(request)
        try:
            result = await self.service.rollback()
        except ModelOpsError as exc:
            context = {"title": "Roll back", "target": None, "error": exc.message}
            return self.render(request, "rollback.html", context, status_for(exc), viewer)
        log.info(
            "console: %s rolled back to v%s", viewer.session.who if viewer.session else "?", result["version"]
        )
        return self._done("rollback", result)

    # -- predict ----------------------------------------------------------------------------------------
    async def predict_page(self, request: Request) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        view = "fields" if request.query_params.get("view") == "fields" else "text"
        return self._predict_view(request, viewer, view, None, None, None, None)

    def _predict_view(
        self,
        request: Request,
        viewer: Viewer,
        view: str,
        text: str | None,
        values: list[str] | None,
        error: ModelOpsError | None,
        answer: list[dict[str, Any]] | None,
        status: int = 200,
    ) -> Response:
        model = self.service.store.current
        context: dict[str, Any] = {
            "title": "Predict",
            "view": view,
            "ready": model is not None,
            "answer": answer,
            "error": error.message if error else None,
            "error_index": None,
            "recent": self.recent.newest_first(),
        }
        if model is not None:
            example = example_text(model)
            context["text"] = example if text is None else text
            context["columns"] = model.columns
            context["values"] = values or [v.strip() for v in example.split(",")] if example else []
            context["classes"] = model.classes
            context["error_index"] = field_index(error.field if error else None, model.columns)
        if request.headers.get("hx-request") == "true":
            return self.render(request, "predict_panel.html", context, status, viewer)
        return self.render(request, "predict.html", context, status, viewer)

    async def predict(self, request: Request) -> Response:
        # Predicting reads nothing secret and moves nothing; it needs a session like every POST so that the
        # CSRF token protects it (it writes the prediction log).
        viewer, form = await self._post(request)
        view = "fields" if form.get("view") == "fields" else "text"
        text = form.get("text", "")
        model = self.service.store.current
        values = [form.get(f"f{i}", "") for i in range(model.n_features)] if model else None
        try:
            model = self.service.model()
            body = fields_body(form, model.columns) if view == "fields" else text_body(text, model.n_features)
            rows = parse_rows(body, model, min(CONSOLE_MAX_ROWS, self.settings.max_request_rows))
            result = await self.service.predict(model, rows, request.state.request_id)
        except ModelOpsError as exc:
            # 200: the page answered (htmx swaps only successful answers); the message is inline
            return self._predict_view(request, viewer, view, text, values, exc, None)
        answer = []
        for i, label in enumerate(result.labels.tolist()):
            probabilities = None
            if result.probabilities is not None and model.classes:
                probabilities = list(zip(model.classes, result.probabilities[i].tolist(), strict=False))
            answer.append(
                {"row": i + 1, "label": label, "probabilities": probabilities, "version": model.version}
            )
        return self._predict_view(request, viewer, view, text, values, None, answer)

    # -- live -------------------------------------------------------------------------------------------
    def _live_context(self) -> dict[str, Any]:
        self.sampler.sample_if_due()
        context: dict[str, Any] = {
            "charts": charts(self.sampler),
            "summary": self.sampler.summary(),
            "interval_s": self.sampler.interval_s,
            "drift": None,
            "rollout": None,
        }
        if self.service.store.current is not None:
            try:
                context["drift"] = self.service.drift_report()
            except ModelOpsError:
                context["drift"] = None
        context["rollout"] = self._rollout_status()
        return context

    async def live_page(
        self,
        request: Request,
        error: ModelOpsError | None = None,
        status: int = 200,
        form: dict[str, str] | None = None,
    ) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        audit: list[dict[str, Any]] = []
        audit_error = None
        try:
            moves = await self.service.registry_call(self.service.registry.audit)
            audit = [m.to_dict() for m in reversed(moves)][:AUDIT_ROWS]
        except ModelOpsError as exc:
            audit_error = exc.message
        except Exception:  # the rest of the page is still worth showing
            log.exception("console: reading the audit trail failed")
            audit_error = "the alias history cannot be read right now (see the server log)"
        context = {
            **self._live_context(),
            "title": "Live",
            "audit": audit,
            "audit_error": audit_error,
            "rollout_error": rollout_error_text(error),
            "rollout_error_field": error.field if error and error.field in ROLLOUT_FIELDS else None,
            "rollout_form": form or {},
            "modes": ROLLOUT_MODES,
            "challenger_alias": self.challenger_alias,
            "default_steps": str(getattr(self.settings, "rollout_steps", "5,25,50,100")).replace(",", ", "),
            "default_interval_s": float(getattr(self.settings, "rollout_interval_s", 60.0)),
        }
        return self.render(request, "live.html", context, status, viewer)

    async def live_panel(self, request: Request) -> Response:
        viewer = self._read_gate(request)
        if isinstance(viewer, Response):
            return viewer
        context = {**self._live_context(), "modes": ROLLOUT_MODES, "rollout_error": None}
        return self.render(request, "live_panel.html", context, viewer=viewer)

    async def rollout_action(self, request: Request) -> Response:
        viewer, form = await self._post(request)
        action = str(request.path_params["action"])
        service: Any = self.service
        if not hasattr(service, "rollout_status") or action not in ("start", "abort", "promote"):
            return pages.html("not found", 404)
        who = viewer.session.who if viewer.session else "?"
        why = f"console ({who}): {form.get('why', '').strip()[:500] or 'no reason given'}"
        result: dict[str, Any] | None = None
        try:
            if action == "start":
                version = form.get("version", "").strip()
                if not VERSION.match(version):
                    raise InvalidInput(
                        "version must be a registered version number, e.g. '3'", field="version"
                    )
                steps_text = form.get("steps", "")
                if not STEPS.match(steps_text):
                    raise InvalidInput(
                        "steps must be percents separated by commas, e.g. 10, 50, 100", field="steps"
                    )
                steps = [int(s) for s in re.split(r"[, ]+", steps_text.strip()) if s]
                try:
                    interval_s = float(form.get("interval_s", ""))
                except ValueError:
                    raise InvalidInput("interval must be a number of seconds", field="interval_s") from None
                mode = form.get("mode", "")
                if mode not in ROLLOUT_MODES:
                    raise InvalidInput(f"mode must be one of {', '.join(ROLLOUT_MODES)}", field="mode")
                result = await service.rollout_start(version, steps, interval_s, mode)
            elif action == "abort":
                result = await service.rollout_abort(why)
            else:
                result = await service.rollout_promote(why)
        except ModelOpsError as exc:
            kept = {k: form.get(k, "") for k in ROLLOUT_FIELDS} if action == "start" else None
            return await self.live_page(request, exc, status_for(exc), kept)
        log.info("console: %s rollout %s", who, action)
        await self._until_applied(result)
        return RedirectResponse("/ui/live#rollout", 303)

    async def _until_applied(self, result: dict[str, Any] | None) -> None:
        """Wait (briefly) until this process's view of the rollout shows `result`, so the page after the
        redirect is not one poll behind. Other workers and replicas catch up at their next poll."""
        if not isinstance(result, dict) or "id" not in result:
            return
        deadline = asyncio.get_running_loop().time() + ROLLOUT_APPLIED_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            now = self._rollout_status() or {}
            if (now.get("id"), now.get("state")) == (result.get("id"), result.get("state")):
                return
            await asyncio.sleep(0.05)


def rollout_error_text(error: ModelOpsError | None) -> str | None:
    """A refused rollout action's message, naming the form field it is about."""
    if error is None:
        return None
    label = ROLLOUT_FIELDS.get(error.field or "")
    return f"{label}: {error.message}" if label else error.message
