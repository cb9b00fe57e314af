"""The web console in process (httpx ASGITransport, fake registry, a real small model): sessions and CSRF,
sign-in and out, the pages, deploy / rollback / predict through forms, the Live page's numbers and the rollout
panel against a fake rollout interface. The real browser runs in tests/browser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from modelops.alias import AliasMove
from modelops.console import live, pages
from modelops.console.forms import field_index, text_body
from modelops.console.session import COOKIE, PRE_COOKIE, Sessions, session_key
from modelops.registry import VersionInfo
from modelops.rollout.state import ROLLOUT_TAG
from modelops.serving.model import Prediction
from modelops.settings import ServerSettings
from tests.unit.test_http_app import TOKEN, FakeRegistry, app_service, make_app, small_model

pytestmark = pytest.mark.anyio
BASE = "http://console.test"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class AuditedRegistry(FakeRegistry):
    """The fake registry with the audit trail the Live page reads."""

    def audit(self) -> list[AliasMove]:
        return [
            AliasMove(1_700_000_000_000 + i, "champion", m[0], "operator", m[1], m[2], m[3])
            for i, m in enumerate(self.moves)
        ]

    def list_versions(self, limit: int = 100) -> list[VersionInfo]:
        """The versions with the aliases they hold now, as MLflow lists them."""
        holders = {**self.aliases, self.alias: self.holder}
        return [
            replace(v, aliases=tuple(a for a, held in holders.items() if held == v.version))
            for v in super().list_versions(limit)
        ]


async def browser_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        yield http
    service = app_service(app)
    await service.batcher.stop()
    service.registry_pool.shutdown(wait=False)


def console_app(**settings: Any) -> FastAPI:
    return make_app(registry=AuditedRegistry(), model=small_model(), **settings)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async for client in browser_for(console_app()):
        yield client


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    page = await http.get("/ui/signin")
    return await http.post(
        "/ui/signin", data={"csrf": csrf_of(page), "method": "token", "token": token, "next": ""}
    )


async def form_token(http: httpx.AsyncClient, url: str = "/ui/versions") -> str:
    return csrf_of(await http.get(url))


# -- sessions -------------------------------------------------------------------------------------------
def test_session_cookies_are_signed_expire_and_resist_tampering() -> None:
    now = [1000.0]
    sessions = Sessions(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    value, session = sessions.issue("admin")
    assert sessions.read(value) == session
    payload, signature = value.split(".")
    assert sessions.read(payload + "." + signature[:-2] + "AA") is None
    assert sessions.read(payload[:-2] + "x." + signature) is None
    assert Sessions(b"j" * 32, ttl_s=60, clock=lambda: now[0]).read(value) is None  # another key
    assert sessions.read(None) is None and sessions.read("garbage") is None
    # a pre-sign-in cookie is no session, and a session no pre-sign-in cookie
    pre, _ = sessions.issue_pre()
    assert sessions.read(pre) is None and sessions.read_pre(value) is None
    now[0] += 61
    assert sessions.read(value) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    sessions = Sessions(b"k" * 32, ttl_s=60)
    _, one = sessions.issue("admin")
    _, two = sessions.issue("admin")
    assert sessions.csrf_ok(one.sid, sessions.csrf_token(one.sid))
    assert not sessions.csrf_ok(two.sid, sessions.csrf_token(one.sid))
    assert not sessions.csrf_ok(one.sid, None) and not sessions.csrf_ok(None, "x")


def test_the_session_key_comes_from_the_secret_or_the_admin_token_never_is_it() -> None:
    token, secret = SecretStr("t0ken"), SecretStr("s")
    from_token = session_key(ServerSettings(admin_token=token))
    assert from_token is not None and b"t0ken" not in from_token
    assert session_key(ServerSettings(admin_token=token)) == from_token  # every replica agrees
    assert session_key(ServerSettings(admin_token=token, ui_session_secret=secret)) != from_token
    assert session_key(ServerSettings()) is None


# -- sign in and out --------------------------------------------------------------------------------------
async def test_pages_need_a_session_by_default(http: httpx.AsyncClient) -> None:
    for path in ("/ui/versions", "/ui/predict", "/ui/live", "/ui/live/panel", "/ui/rollback"):
        response = await http.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/signin"), path
    assert (await http.get("/ui")).headers["location"] == "/ui/versions"
    polled = await http.get("/ui/live/panel", headers={"hx-request": "true"})
    assert polled.status_code == 200 and polled.headers["hx-redirect"] == "/ui/signin"


async def test_sign_in_with_the_admin_token_sets_a_hardened_cookie(http: httpx.AsyncClient) -> None:
    page = await http.get("/ui/signin?next=/ui/live")
    assert page.status_code == 200 and 'name="next" value="/ui/live"' in page.text
    pre = page.headers["set-cookie"].lower()
    assert PRE_COOKIE in pre and "httponly" in pre and "samesite=strict" in pre
    response = await http.post(
        "/ui/signin", data={"csrf": csrf_of(page), "method": "token", "token": TOKEN, "next": "/ui/live"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/live"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(COOKIE + "="))
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/ui" in attributes
    assert "max-age=28800" in attributes and "secure" not in attributes  # plain http on loopback
    versions = await http.get("/ui/versions")
    assert versions.status_code == 200 and "Signed in as admin" in versions.text


async def test_the_cookie_is_secure_behind_an_https_proxy(http: httpx.AsyncClient) -> None:
    page = await http.get("/ui/signin")
    response = await http.post(
        "/ui/signin",
        data={"csrf": csrf_of(page), "method": "token", "token": TOKEN},
        headers={"x-forwarded-proto": "https"},
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(COOKIE + "="))
    assert "secure" in cookie.lower()


async def test_a_wrong_token_is_refused(http: httpx.AsyncClient) -> None:
    response = await sign_in(http, token="not-the-token")
    assert response.status_code == 401
    assert "wrong admin token" in response.text
    assert not any(c.startswith(COOKIE + "=") for c in response.headers.get_list("set-cookie"))
    assert (await http.get("/ui/versions")).status_code == 303


async def test_sign_in_needs_the_forms_token(http: httpx.AsyncClient) -> None:
    await http.get("/ui/signin")
    response = await http.post("/ui/signin", data={"method": "token", "token": TOKEN})
    assert response.status_code == 403
    assert (await http.get("/ui/versions")).status_code == 303


async def test_next_never_leaves_the_console(http: httpx.AsyncClient) -> None:
    page = await http.get("/ui/signin")
    response = await http.post(
        "/ui/signin",
        data={"csrf": csrf_of(page), "method": "token", "token": TOKEN, "next": "//evil.example/ui"},
    )
    assert response.headers["location"] == "/ui/versions"


async def test_sign_out_ends_the_session(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    token = await form_token(http)
    response = await http.post("/ui/signout", data={"csrf": token})
    assert response.status_code == 303
    assert any(c.startswith(COOKIE + '=""') for c in response.headers.get_list("set-cookie"))
    http.cookies.delete(COOKIE, path="/ui")
    assert (await http.get("/ui/versions")).status_code == 303


async def test_operator_password_is_checked_before_mlflow_is_asked() -> None:
    app = console_app(
        registry_write_username="operator",
        registry_write_password="op-pass",
        tracking_uri="http://127.0.0.1:9",
    )
    async for http in browser_for(app):
        page = await http.get("/ui/signin")
        assert "operator" in page.text and 'id="username"' in page.text
        wrong = await http.post(
            "/ui/signin",
            data={"csrf": csrf_of(page), "method": "operator", "username": "operator", "password": "nope"},
        )
        # the fake tracking URI (127.0.0.1:9) refuses connections: a wrong password never got there
        assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
        right = await http.post(
            "/ui/signin",
            data={
                "csrf": csrf_of(wrong),
                "method": "operator",
                "username": "operator",
                "password": "op-pass",
            },
        )
        assert right.status_code == 401 and "MLflow is not reachable" in right.text


async def test_without_a_key_sign_in_is_disabled() -> None:
    async for http in browser_for(console_app(admin_token=None)):
        page = await http.get("/ui/signin")
        assert "Sign-in is disabled" in page.text and 'name="token"' not in page.text
        response = await http.post("/ui/signin", data={"method": "token", "token": "x"})
        assert response.status_code == 403
        assert (await http.get("/ui/versions")).status_code == 303


async def test_public_read_shows_pages_without_actions() -> None:
    async for http in browser_for(console_app(ui_public_read=True)):
        page = await http.get("/ui/versions")
        assert page.status_code == 200 and 'id="version-3"' in page.text
        assert "/deploy" not in page.text and "Sign in</a> to deploy" in page.text
        predict = await http.get("/ui/predict")
        assert predict.status_code == 200 and 'id="predict-button"' not in predict.text
        assert (await http.get("/ui/live")).status_code == 200
        # and a POST still needs a session
        assert (await http.post("/ui/rollback", data={"csrf": "x"})).status_code == 403


# -- CSRF and headers ---------------------------------------------------------------------------------------
async def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(
    http: httpx.AsyncClient,
) -> None:
    await sign_in(http)
    registry: FakeRegistry = app_service(http._transport.app).registry  # type: ignore[attr-defined,assignment]
    assert (await http.post("/ui/versions/2/deploy", data={})).status_code == 403
    assert (await http.post("/ui/versions/2/deploy", data={"csrf": "forged"})).status_code == 403
    token = await form_token(http)
    cross = await http.post(
        "/ui/versions/2/deploy", data={"csrf": token}, headers={"origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and "cross-origin" in cross.text
    referer = await http.post(
        "/ui/versions/2/deploy", data={"csrf": token}, headers={"referer": "http://evil.example/ui"}
    )
    assert referer.status_code == 403
    assert registry.holder == "1" and registry.moves == []


async def test_console_pages_carry_security_headers_and_stay_out_of_the_api_document(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/ui/signin")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in page.text and " style=" not in page.text
    htmx = await http.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200 and "javascript" in htmx.headers["content-type"]
    assert (await http.get("/ui/static/../settings.py")).status_code == 404
    assert (await http.get("/ui/static/nothing.js")).status_code == 404
    schema = (await http.get("/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith("/ui")]


async def test_the_console_can_be_switched_off() -> None:
    async for http in browser_for(make_app(model=small_model(), ui_enabled=False)):
        assert (await http.get("/ui/signin")).status_code == 404


# -- versions, deploy, rollback -----------------------------------------------------------------------------
async def test_versions_table_deploy_and_rollback(http: httpx.AsyncClient) -> None:
    service = app_service(http._transport.app)  # type: ignore[attr-defined]
    registry: FakeRegistry = service.registry  # type: ignore[assignment]
    registry.versions["3"] = registry.versions["3"].__class__(
        **{**registry.versions["3"].__dict__, "tags": {"modelops.awaiting_approval": "true"}}
    )
    await sign_in(http)
    page = await http.get("/ui/versions")
    assert [m for m in re.findall(r'data-version="(\d+)"', page.text)] == ["3", "2", "1"]
    assert "awaiting approval" in page.text
    assert f'href="{service.settings.tracking_uri.rstrip("/")}/#/runs/run2"' in page.text
    assert 'href="/models/2/card?format=markdown"' in page.text
    confirm = await http.get("/ui/versions/2/deploy")
    assert confirm.status_code == 200 and 'id="confirm"' in confirm.text
    deployed = await http.post("/ui/versions/2/deploy", data={"csrf": csrf_of(confirm)})
    assert deployed.status_code == 303, deployed.text
    assert registry.holder == "2" and service.store.current is not None
    assert service.store.current.version == "2"
    after = await http.get(deployed.headers["location"])
    assert "Deployed v2 (was v1)." in after.text
    row = after.text.split('id="version-2"')[1].split("</tr>")[0]
    assert "champion" in row or "served here" in row
    # a version that cannot load: the error inline, the alias stays
    failed = await http.post("/ui/versions/3/deploy", data={"csrf": csrf_of(after)})
    assert failed.status_code == 422 and "warm-up of v3 failed" in failed.text
    assert registry.holder == "2"
    # roll back: the confirmation names the target, then the alias goes back
    back = await http.get("/ui/rollback")
    assert "Roll back to v1" in back.text
    rolled = await http.post("/ui/rollback", data={"csrf": csrf_of(back)})
    assert rolled.status_code == 303 and registry.holder == "1"
    assert "Rolled back to v1 (was v2)." in (await http.get(rolled.headers["location"])).text
    nothing = await http.get("/ui/rollback")
    assert "nothing to roll back to" in nothing.text and 'id="confirm"' not in nothing.text
    refused = await http.post("/ui/rollback", data={"csrf": csrf_of(nothing)})
    assert refused.status_code == 409 and "nothing to roll back to" in refused.text


async def test_a_malformed_version_is_an_inline_error(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    page = await http.get("/ui/versions/abc/deploy")
    assert page.status_code == 422 and "registered version number" in page.text
    unknown = await http.post("/ui/versions/99/deploy", data={"csrf": await form_token(http)})
    assert unknown.status_code == 404 and "no version &#39;99&#39;" in unknown.text


# -- predict --------------------------------------------------------------------------------------------------
def test_predict_text_accepts_commas_spaces_and_new_lines() -> None:
    assert text_body("1, 2 3\n", 3) == {"features": [1.0, 2.0, 3.0]}
    assert text_body("1,2,3\n4 5 6", 3) == {"instances": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}
    assert text_body("1 2 x", 3) == {"features": [1.0, 2.0, "x"]}
    assert text_body("1 2 3 4", 3) == {"features": [1.0, 2.0, 3.0, 4.0]}
    assert field_index("features[2]", ["a", "b", "c"]) == 2
    assert field_index("features.b", ["a", "b", "c"]) == 1
    assert field_index("instances[1][0]", ["a", "b", "c"]) == 0
    assert field_index("features", ["a"]) is None


async def test_predict_shows_the_answer_and_recent_predictions(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    page = await http.get("/ui/predict")
    example = re.search(r'<textarea id="text"[^>]*>([^<]*)</textarea>', page.text)
    assert example and len(example.group(1).split(",")) == 3  # prefilled with the input example
    answer = await http.post(
        "/ui/predict", data={"csrf": csrf_of(page), "view": "text", "text": "0.9 0.9 0.1"}
    )
    assert answer.status_code == 200
    assert re.search(r'class="label">1<', answer.text), answer.text
    assert answer.text.count("<meter") == 2  # a probability per class
    recent = answer.text.split('id="recent"')[1]
    assert "v1" in recent and "No predictions yet" not in recent
    # htmx asks for the panel only
    panel = await http.post(
        "/ui/predict",
        data={"csrf": csrf_of(page), "view": "text", "text": "0.1,0.1,0.1\n0.9,0.9,0.9"},
        headers={"hx-request": "true"},
    )
    assert panel.text.lstrip().startswith('<div id="predict-panel">') and "Row 2" in panel.text


async def test_predict_shows_the_apis_validation_messages_inline(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    token = await form_token(http, "/ui/predict")
    short = await http.post("/ui/predict", data={"csrf": token, "view": "text", "text": "1, 2"})
    assert short.status_code == 200
    assert "features has 2 values; the model expects 3" in short.text and 'aria-invalid="true"' in short.text
    word = await http.post("/ui/predict", data={"csrf": token, "view": "text", "text": "1 2 abc"})
    assert "features[2] must be a number" in word.text
    infinite = await http.post("/ui/predict", data={"csrf": token, "view": "text", "text": "1 inf 2"})
    assert "must be finite" in infinite.text
    fields = await http.post(
        "/ui/predict", data={"csrf": token, "view": "fields", "f0": "0.5", "f1": "", "f2": "0.2"}
    )
    assert "features.b must be a number" in fields.text or "features[1] must be a number" in fields.text
    field_b = fields.text.split('id="f1"')[1].split(">")[0]
    assert 'aria-invalid="true"' in field_b and 'value="0.5"' in fields.text


async def test_predict_without_a_model_says_so() -> None:
    app = make_app(registry=AuditedRegistry())
    async for http in browser_for(app):
        await sign_in(http)
        page = await http.get("/ui/predict")
        assert page.status_code == 200 and "No model is loaded" in page.text
        answer = await http.post("/ui/predict", data={"csrf": csrf_of(page), "text": "1 2 3"})
        assert answer.status_code == 200 and "No model is loaded" in answer.text


async def test_the_named_fields_view_lists_every_feature(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    page = await http.get("/ui/predict?view=fields")
    for i, name in enumerate(["a", "b", "c"]):
        assert f'<label for="f{i}">{name}</label>' in page.text
    ok = await http.post(
        "/ui/predict", data={"csrf": csrf_of(page), "view": "fields", "f0": "0.9", "f1": "0.9", "f2": "0"}
    )
    assert 'class="label">1<' in ok.text


# -- live -------------------------------------------------------------------------------------------------------
def test_quantiles_follow_prometheus_histogram_quantile() -> None:
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert live.quantile(0.5, buckets) == pytest.approx(0.01)
    assert live.quantile(0.9, buckets) == pytest.approx(0.1)
    assert live.quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.9)
    assert live.quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert live.quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # beyond the last finite bucket


def exposition(ok: int, errors: int, fast: int, version: str = "7") -> bytes:
    return (
        "# TYPE modelops_version_requests_total counter\n"
        f'modelops_version_requests_total{{version="{version}",outcome="ok"}} {ok}\n'
        f'modelops_version_requests_total{{version="{version}",outcome="error"}} {errors}\n'
        "# TYPE modelops_version_predict_duration_seconds histogram\n"
        f'modelops_version_predict_duration_seconds_bucket{{version="{version}",le="0.001"}} {fast}\n'
        f'modelops_version_predict_duration_seconds_bucket{{version="{version}",le="0.1"}} {ok}\n'
        f'modelops_version_predict_duration_seconds_bucket{{version="{version}",le="+Inf"}} {ok}\n'
        f'modelops_version_predict_duration_seconds_count{{version="{version}"}} {ok}\n'
        f'modelops_version_predict_duration_seconds_sum{{version="{version}"}} 0.5\n'
    ).encode()


def test_the_sampler_turns_counters_into_rates_latencies_and_error_ratios() -> None:
    texts = iter([exposition(0, 0, 0), exposition(100, 0, 100), exposition(150, 50, 100)])
    now = [0.0]
    sampler = live.Sampler(lambda: next(texts), interval_s=5, size=3, clock=lambda: now[0])
    for _ in range(3):
        sampler.sample()
        now[0] += 10
    points = sampler.series()["7"]
    assert [p.rps for p in points] == [10.0, 10.0]
    assert points[0].error_ratio == 0 and points[1].error_ratio == 0.5
    assert points[0].p50_s == pytest.approx(0.0005) and points[1].p99_s == pytest.approx(
        0.1 * 0.99 - 0.001 * 0.98, rel=0.2
    )
    summary = sampler.summary(window_s=25)
    assert summary[0]["version"] == "7" and summary[0]["requests"] == 200
    drawn = live.charts(sampler)
    assert [c["title"] for c in drawn] == ["Throughput", "Latency p50", "Latency p99", "Error ratio"]
    assert drawn[0]["lines"][0]["version"] == "7" and len(drawn[0]["lines"][0]["points"].split()) == 2
    # a bounded ring, and a broken render does not raise
    assert len(sampler.samples) == 3
    sampler.render = lambda: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[assignment]
    sampler.sample()
    assert len(sampler.samples) == 3


def test_a_counter_reset_counts_from_zero() -> None:
    old = live.VersionCounters(ok=100)
    point = live.between(old, live.VersionCounters(ok=5), 5.0)
    assert point is not None and point.requests == 5


def test_recent_predictions_keep_the_last_thirty() -> None:
    recent = live.RecentPredictions()
    model = small_model("4")
    for i in range(35):
        event = type(
            "Event",
            (),
            {
                "at": float(i),
                "model": model,
                "rows": np.zeros((1, 3)),
                "prediction": Prediction(np.array([i % 2]), np.array([[0.25, 0.75]])),
            },
        )()
        recent(event)
    items = recent.newest_first()
    assert len(items) == 30 and items[0].at == 34.0 and items[0].probability == 0.75
    assert items[0].label == "0" and items[0].version == "4"


async def test_live_page_shows_traffic_drift_and_the_audit_trail(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    token = await form_token(http, "/ui/predict")
    for _ in range(3):
        await http.post("/ui/predict", data={"csrf": token, "text": "0.5 0.5 0.5"})
    await http.post("/ui/versions/2/deploy", data={"csrf": token})
    console = http._transport.app.state.console  # type: ignore[attr-defined]
    console.sampler.samples.clear()
    console.sampler.sample()
    await http.post("/ui/predict", data={"csrf": token, "text": "0.5 0.5 0.5"})
    console.sampler.clock = lambda: console.sampler.samples[-1].at + 5
    page = await http.get("/ui/live")
    assert page.status_code == 200
    assert page.text.count("<svg") == 4 and "<polyline" in page.text
    summary = page.text.split('id="summary"')[1].split("</table>")[0]
    assert "v2" in summary
    assert "Drift per feature" in page.text
    audit = page.text.split('id="audit"')[1]
    assert "deploy" in audit and "v1 → v2" in audit
    panel = await http.get("/ui/live/panel")
    assert panel.text.startswith('<div id="live-panel" hx-get="/ui/live/panel"')


# -- the rollout panel, against the interface issue 13 provides --------------------------------------------------
class FakeRollout:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.state: dict[str, Any] = {
            "state": "idle",
            "version": None,
            "champion_version": "1",
            "mode": None,
            "step": 0,
            "steps": [],
            "percent": 0,
            "decisions": [],
        }

    def rollout_status(self) -> dict[str, Any]:
        return dict(self.state)

    async def rollout_start(
        self, version: str, steps: list[int], interval_s: float, mode: str
    ) -> dict[str, Any]:
        from modelops.errors import VersionNotFound

        if version == "99":
            raise VersionNotFound("model 'm' has no version '99'", field="version")
        self.calls.append(("start", (version, steps, interval_s, mode)))
        self.state.update(
            state="running",
            version=version,
            mode=mode,
            steps=steps,
            step=0,
            percent=steps[0],
            decisions=[
                {"at": 1_700_000_000.0, "step": 0, "verdict": "continue", "reason": "error ratio 0.0 <= 0.01"}
            ],
        )
        return self.rollout_status()

    async def rollout_abort(self, why: str) -> dict[str, Any]:
        self.calls.append(("abort", why))
        self.state.update(state="aborted", percent=0)
        return self.rollout_status()

    async def rollout_promote(self, why: str) -> dict[str, Any]:
        self.calls.append(("promote", why))
        self.state.update(state="promoted", percent=100)
        return self.rollout_status()


async def test_rollout_panel_starts_shows_progress_promotes_and_aborts(http: httpx.AsyncClient) -> None:
    service = app_service(http._transport.app)  # type: ignore[attr-defined]
    fake = FakeRollout()
    for name in ("rollout_status", "rollout_start", "rollout_abort", "rollout_promote"):
        setattr(service, name, getattr(fake, name))
    await sign_in(http)
    page = await http.get("/ui/live")
    assert 'id="rollout"' in page.text and 'id="rollout-start"' in page.text
    token = csrf_of(page)
    bad = await http.post(
        "/ui/rollout/start",
        data={"csrf": token, "version": "2", "steps": "ten", "interval_s": "5", "mode": "canary"},
    )
    assert bad.status_code == 422 and "steps must be percents" in bad.text and fake.calls == []
    missing = await http.post(
        "/ui/rollout/start",
        data={"csrf": token, "version": "99", "steps": "10", "interval_s": "5", "mode": "canary"},
    )
    assert missing.status_code == 404 and "no version &#39;99&#39;" in missing.text
    started = await http.post(
        "/ui/rollout/start",
        data={"csrf": token, "version": "2", "steps": "10, 50,100", "interval_s": "30", "mode": "canary"},
    )
    assert started.status_code == 303 and fake.calls == [("start", ("2", [10, 50, 100], 30.0, "canary"))]
    running = await http.get("/ui/live")
    assert '<progress id="rollout-progress" max="100" value="10">' in running.text
    assert "error ratio 0.0" in running.text and 'id="rollout-promote"' in running.text
    assert 'id="rollout-start"' not in running.text
    promoted = await http.post("/ui/rollout/promote", data={"csrf": token, "why": "looks good"})
    assert promoted.status_code == 303 and fake.calls[-1] == ("promote", "console (admin): looks good")
    await http.post("/ui/rollout/abort", data={"csrf": token})
    assert fake.calls[-1] == ("abort", "console (admin): no reason given")
    assert (await http.post("/ui/rollout/start", data={})).status_code == 403
    assert (await http.post("/ui/rollout/explode", data={"csrf": token})).status_code == 404


def test_the_challenger_badge_needs_a_running_rollout_of_that_version() -> None:
    body = {
        "served_version": "1",
        "versions": [
            {"version": "3", "aliases": []},
            {"version": "2", "aliases": ["challenger"]},
            {"version": "1", "aliases": ["champion"]},
        ],
    }

    def badges(rolling_out: str | None) -> dict[str, list[str]]:
        rows = pages.version_rows(body, "champion", "challenger", "http://mlflow.test", rolling_out)
        return {row["version"]: [kind for kind, _ in row["badges"]] for row in rows}

    assert badges("2") == {"3": [], "2": ["challenger"], "1": ["champion", "served"]}
    # the rollout ended: the alias left behind is only a muted label
    assert badges(None) == {"3": [], "2": ["last-challenger"], "1": ["champion", "served"]}
    # the state names another version than the alias (a poll in between): only the state's version
    assert badges("3") == {"3": ["challenger"], "2": ["last-challenger"], "1": ["champion", "served"]}


def version_badges(page: httpx.Response, version: str) -> list[str]:
    row = page.text.split(f'id="version-{version}"')[1].split("</tr>")[0]
    return re.findall(r'<span class="badge ([a-z-]+)">', row)


async def test_a_real_rollout_from_the_live_page_and_the_badges_it_leaves(http: httpx.AsyncClient) -> None:
    """The service's own rollout operations on the fake registry, with this process's follower polling."""
    service = app_service(http._transport.app)  # type: ignore[attr-defined]
    registry: FakeRegistry = service.registry  # type: ignore[assignment]
    service.follower.start()
    try:
        await sign_in(http)
        page = await http.get("/ui/live")
        token = csrf_of(page)
        form = {"csrf": token, "steps": "50, 100", "interval_s": "60", "mode": "canary"}
        # the champion's own version: refused inline, naming the field, the values kept
        refused = await http.post("/ui/rollout/start", data={**form, "version": "1"})
        assert refused.status_code == 409, refused.text
        assert "Version: v1 is already the champion" in refused.text
        assert re.search(r'id="rollout-version"[^>]*value="1" aria-invalid="true"', refused.text)
        assert 'value="50, 100"' in refused.text and ROLLOUT_TAG not in registry.tags
        started = await http.post("/ui/rollout/start", data={**form, "version": "2"})
        assert started.status_code == 303, started.text
        assert registry.aliases == {"challenger": "2"}
        running = await http.get("/ui/live")
        status = running.text.split('id="rollout-status"')[1].split("</dl>")[0]
        assert 'class="state-running">running<' in status and "v2" in status
        assert "Traffic to v2: 50%" in running.text and 'id="rollout-abort"' in running.text
        versions = await http.get("/ui/versions")
        assert version_badges(versions, "2") == ["challenger"]
        assert version_badges(versions, "1") == ["champion", "served"]
        # a second start while one runs: 409, inline
        again = await http.post("/ui/rollout/start", data={**form, "version": "2"})
        assert again.status_code == 409 and "abort or promote it first" in again.text
        aborted = await http.post("/ui/rollout/abort", data={"csrf": token, "why": "checking the console"})
        assert aborted.status_code == 303
        after = await http.get("/ui/live")
        status = after.text.split('id="rollout-status"')[1].split("</dl>")[0]
        assert 'class="state-aborted">aborted<' in status
        assert '<dd id="rollout-reason">console (admin): checking the console</dd>' in status
        assert 'id="rollout-start"' in after.text
        # the alias stays on v2 (docs/rollouts.md): the badge does not claim a challenger any more
        assert registry.aliases == {"challenger": "2"}
        versions = await http.get("/ui/versions")
        assert version_badges(versions, "2") == ["last-challenger"]
        assert "last challenger" in versions.text
    finally:
        await service.follower.stop()


async def test_forms_are_bounded(http: httpx.AsyncClient) -> None:
    await sign_in(http)
    token = await form_token(http, "/ui/predict")
    huge = await http.post(
        "/ui/predict",
        content=f"csrf={token}&text=" + "1," * 200_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    json_body = await http.post("/ui/predict", json={"csrf": token})
    assert json_body.status_code == 403  # not a form: it carries no CSRF token
