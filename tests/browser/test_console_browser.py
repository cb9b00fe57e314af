"""The console in Chromium against a live stack: sign in, predict, deploy, roll back, see the versions table
change, sign out; a wrong token and a POST without the CSRF token are refused; every page passes axe-core
(no serious or critical violations), works at phone width and with the keyboard. Screenshots go to docs/img."""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from modelops.console.live import SAMPLE_INTERVAL_S
from tests.browser.conftest import (
    ACTION_TIMEOUT_S,
    LIVE_TIMEOUT_S,
    ROLLOUT_TIMEOUT_S,
    SCREENSHOTS,
    Pages,
    Stack,
    axe_violations,
    screenshot,
    sign_in,
)
from tests.integration.conftest import ADMIN_TOKEN
from tests.support import TEST_PASSWORDS, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def version_row(page: Any, version: str) -> Any:
    return page.locator(f"#version-{version}")


def test_a_wrong_token_is_refused(pages: Pages) -> None:
    page = pages.new()
    page.goto("/ui/versions")
    expect(page).to_have_url(re.compile(r"/ui/signin\?next=%2Fui%2Fversions$"))
    screenshot(page, "signin")
    page.get_by_label("Admin token", exact=True).fill("not-the-admin-token")
    page.get_by_role("button", name="Sign in").first.click()
    expect(page.locator("#signin-error")).to_have_text("wrong admin token")
    page.goto("/ui/versions")
    expect(page).to_have_url(re.compile(r"/ui/signin"))


def test_a_post_without_the_csrf_token_is_refused(pages: Pages, stack: Stack) -> None:
    page = pages.new()
    sign_in(page)
    # the browser's own session cookie rides along; only the token is missing (or forged)
    for form in ({}, {"csrf": "forged-token"}):
        answer = page.request.post(f"{stack.url}/ui/versions/2/deploy", form=form)
        assert answer.status == 403, answer.text()
        assert "security token" in answer.text()
    cross = page.request.post(
        f"{stack.url}/ui/rollback", form={"csrf": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status == 403
    assert stack.served_version() == "1"


def test_operator_signs_in_with_the_mlflow_credential(pages: Pages) -> None:
    page = pages.new()
    page.goto("/ui/signin")
    page.get_by_label("MLflow user name", exact=True).fill("operator")
    page.get_by_label("MLflow password", exact=True).fill(TEST_PASSWORDS["operator"])
    page.get_by_role("button", name="Sign in").nth(1).click()
    page.wait_for_url("**/ui/versions")
    expect(page.locator(".signed-in")).to_have_text("Signed in as operator:operator")


def test_predict_deploy_roll_back_and_sign_out(pages: Pages, stack: Stack) -> None:
    page = pages.new()
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    sign_in(page)

    # versions: v2 (not promoted) above v1 (champion, served)
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    expect(version_row(page, "1").locator(".badge.champion")).to_be_visible()
    expect(version_row(page, "2").locator(".badge.champion")).to_have_count(0)
    expect(
        version_row(page, "1").get_by_role("link", name=re.compile("Run of v1 in MLflow"))
    ).to_have_attribute("href", re.compile(r"/#/runs/[0-9a-f]+$"))
    screenshot(page, "versions")

    # predict with the prefilled input example (htmx swaps the answer in)
    page.get_by_role("link", name="Predict").click()
    textarea = page.get_by_label(re.compile("^Values for v1"))
    example = textarea.input_value()
    assert len(re.split(r"[,\s]+", example.strip())) == 30  # the breast-cancer features
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#answer .label")).to_have_count(1)
    expect(page.locator("#answer table.proba tbody tr")).to_have_count(2)
    expect(page.locator("#recent tbody tr").first).to_contain_text("v1")

    # the API's validation message, inline
    page.get_by_label(re.compile("^Values for v1")).fill("1, 2, 3")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#predict-error")).to_contain_text("features has 3 values; the model expects 30")
    expect(page.get_by_label(re.compile("^Values for v1"))).to_have_attribute("aria-invalid", "true")
    page.get_by_label(re.compile("^Values for v1")).fill(example)
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#answer .label")).to_have_count(1)
    screenshot(page, "predict")

    # deploy v2, with a confirmation step
    page.get_by_role("link", name="Versions").click()
    version_row(page, "2").get_by_role("link", name=re.compile("Deploy")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Deploy v2?")
    screenshot(page, "deploy")
    page.get_by_role("button", name="Deploy v2").click(timeout=ACTION_TIMEOUT_S * 1000)
    page.wait_for_url(re.compile(r"/ui/versions\?done=deploy"), timeout=ACTION_TIMEOUT_S * 1000)
    expect(page.locator("#notice")).to_have_text("Deployed v2 (was v1).")
    expect(version_row(page, "2").locator(".badge.champion")).to_be_visible()
    expect(version_row(page, "1").locator(".badge.champion")).to_have_count(0)
    assert stack.served_version() == "2"

    # roll back to v1
    page.get_by_role("link", name=re.compile("Roll back")).click()
    expect(page.get_by_role("button", name="Roll back to v1")).to_be_visible()
    screenshot(page, "rollback")
    page.get_by_role("button", name="Roll back to v1").click(timeout=ACTION_TIMEOUT_S * 1000)
    page.wait_for_url(re.compile(r"/ui/versions\?done=rollback"), timeout=ACTION_TIMEOUT_S * 1000)
    expect(page.locator("#notice")).to_have_text("Rolled back to v1 (was v2).")
    expect(version_row(page, "1").locator(".badge.champion")).to_be_visible()
    expect(version_row(page, "2").locator(".badge.champion")).to_have_count(0)
    assert stack.served_version() == "1"

    # live: the alias history shows both moves; the numbers fill in from the sampled metrics
    page.get_by_role("link", name="Live").click()
    audit = page.locator("#audit tbody")
    expect(audit).to_contain_text("deploy")
    expect(audit).to_contain_text("rollback")
    # htmx polls the panel: the per-version rows appear once two samples are in, without a reload
    expect(page.locator("#summary tbody th").first).to_be_visible(timeout=LIVE_TIMEOUT_S * 1000)
    expect(page.locator("svg.chart-svg")).to_have_count(4)

    # sign out: the pages are closed again
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signed-out")).to_be_visible()
    page.goto("/ui/versions")
    expect(page).to_have_url(re.compile(r"/ui/signin"))
    assert csp_errors == []


class Traffic:
    """Predictions sent in the background through plain httpx, each with its own X-Request-Id (the routing
    key), counting which version answered (X-Model-Version)."""

    def __init__(self, url: str, features: list[float]) -> None:
        self.url = url
        self.features = features
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-traffic", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                answer = client.post(
                    "/predict", json={"features": self.features}, headers={"X-Request-Id": f"console-{i}"}
                )
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                else:
                    self.answered[answer.headers["x-model-version"]] += 1
                self._stop.wait(0.05)  # about 15 requests/s: charts worth looking at, little CPU

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def rollout_status(stack: Stack) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{stack.url}/rollout", timeout=5).json()
    return status


def test_a_rollout_from_the_live_page_then_abort(pages: Pages, stack: Stack) -> None:
    """Start a canary rollout of v2 from the Live page (a start of the champion's own version is refused
    inline first), watch both versions answer and the panel show the share, then abort it from the console.
    No controller runs: start and abort are the admin API's; nothing advances the steps."""
    page = pages.new(bypass_csp=True)
    sign_in(page)
    checked: dict[str, list[dict[str, Any]]] = {}
    page.goto("/ui/predict")
    example = page.get_by_label(re.compile("^Values for v1")).input_value()
    features = [float(v) for v in re.split(r"[,\s]+", example.strip())]

    page.goto("/ui/live")
    expect(page.locator("#rollout-start")).to_be_visible()
    checked["idle"] = axe_violations(page)
    start = page.locator("#rollout-start")

    def start_rollout(version: str) -> None:
        start.get_by_label(re.compile("^Version")).fill(version)
        start.get_by_label(re.compile("^Steps")).fill("50, 100")
        start.get_by_label("Seconds per step").fill("60")
        start.get_by_label("Mode").select_option("canary")
        start.get_by_role("button", name="Start rollout").click()

    # the champion's own version: an inline error naming the field, the form as it was, no 500
    start_rollout("1")
    expect(page.locator("#rollout-error")).to_have_text(
        "Version: v1 is already the champion", timeout=ACTION_TIMEOUT_S * 1000
    )
    expect(start.get_by_label(re.compile("^Version"))).to_have_attribute("aria-invalid", "true")
    expect(start.get_by_label(re.compile("^Steps"))).to_have_value("50, 100")
    checked["refused"] = axe_violations(page)
    assert rollout_status(stack)["state"] in ("idle", "aborted", "promoted")

    # v2 as the challenger at 50 %
    start_rollout("2")
    page.wait_for_url(re.compile(r"/ui/live#rollout$"), timeout=ACTION_TIMEOUT_S * 1000)
    status = page.locator("#rollout-status")
    expect(status.locator(".state-running")).to_have_text("running", timeout=ROLLOUT_TIMEOUT_S * 1000)
    expect(status).to_contain_text("v2")
    expect(page.get_by_text("Traffic to v2: 50%")).to_be_visible()
    expect(page.locator("#rollout-abort")).to_be_visible()
    # the server routes to v2 once its follower has loaded it
    wait_for(lambda: rollout_status(stack).get("challenger_loaded") == "2", ACTION_TIMEOUT_S, "v2 loaded")

    with Traffic(stack.url, features) as traffic:
        # several samples of both versions (the sampler takes one every SAMPLE_INTERVAL_S; htmx redraws)
        page.wait_for_function(
            """() => {
                const lines = document.querySelectorAll('#live-panel figure:first-child polyline.series');
                return lines.length >= 2 && [...lines].every(
                    l => l.getAttribute('points').trim().split(/\\s+/).length >= 4);
            }""",
            timeout=(6 + 4) * SAMPLE_INTERVAL_S * 1000,
        )
        expect(page.locator("#summary tbody th", has_text="v2")).to_be_visible()
        checked["running"] = axe_violations(page)
        page.reload()
        screenshot(page, "live")
        page.locator("#rollout").scroll_into_view_if_needed()
        page.locator("#rollout").screenshot(
            path=str(SCREENSHOTS / "console-rollout.png"), style="#rollout { padding: 4px 16px 16px; }"
        )
        # while it runs, v2 is the challenger on the versions page (another tab: the Live page keeps polling)
        versions = page.context.new_page()
        versions.goto("/ui/versions")
        expect(version_row(versions, "2").locator(".badge.challenger")).to_be_visible()
        versions.close()
    assert traffic.failures == []
    both = traffic.answered
    assert set(both) == {"1", "2"}, both
    share = both["2"] / sum(both.values()) * 100
    assert 25 <= share <= 75, both  # 50 % by the sticky hash, over a few hundred keys

    # abort from the console: the reason shows, the start form is back, the champion takes all traffic
    abort = page.locator("#rollout-abort")
    abort.get_by_label("Why abort").fill("checking the console")
    abort.get_by_role("button", name="Abort rollout").click()
    page.wait_for_url(re.compile(r"/ui/live#rollout$"), timeout=ACTION_TIMEOUT_S * 1000)
    expect(status.locator(".state-aborted")).to_have_text("aborted", timeout=ROLLOUT_TIMEOUT_S * 1000)
    expect(page.locator("#rollout-reason")).to_have_text("console (admin): checking the console")
    expect(page.locator("#rollout-start")).to_be_visible()
    checked["aborted"] = axe_violations(page)
    wait_for(lambda: rollout_status(stack).get("challenger_loaded") is None, ROLLOUT_TIMEOUT_S, "v2 unloaded")
    answers = {
        httpx.post(
            f"{stack.url}/predict", json={"features": features}, headers={"X-Request-Id": f"after-{i}"}
        ).headers["x-model-version"]
        for i in range(20)
    }
    assert answers == {"1"}
    # the challenger alias stays on v2 (docs/rollouts.md), but the versions page no longer calls it one
    page.goto("/ui/versions")
    expect(version_row(page, "2").locator(".badge.challenger")).to_have_count(0)
    expect(version_row(page, "2").locator(".badge.last-challenger")).to_have_text("last challenger")
    checked["versions-after"] = axe_violations(page)
    assert {k: v for k, v in checked.items() if v} == {}


def test_keyboard_only_and_phone_width(pages: Pages) -> None:
    page = pages.new(width=375, height=740)
    page.goto("/ui/signin")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.get_by_label("Admin token", exact=True).focus()
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/versions")
    for path, name in (("/ui/versions", "versions-phone"), ("/ui/predict", None), ("/ui/live", None)):
        page.goto(path)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} scrolls sideways by {overflow}px at phone width"
        if name:
            screenshot(page, name)
    # predict by keyboard: the button is reachable with Tab from the text box
    page.goto("/ui/predict")
    page.get_by_label(re.compile("^Values for")).focus()
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "predict-button":
            break
    assert page.evaluate("() => document.activeElement.id") == "predict-button"
    page.keyboard.press("Enter")
    expect(page.locator("#answer .label")).to_have_count(1)


def test_no_serious_accessibility_violations_on_any_page(pages: Pages) -> None:
    page = pages.new(bypass_csp=True)
    page.goto("/ui/signin")
    checked: dict[str, list[dict[str, Any]]] = {"signin": axe_violations(page)}
    page.get_by_label("Admin token", exact=True).fill("wrong")
    page.get_by_role("button", name="Sign in").first.click()
    expect(page.locator("#signin-error")).to_be_visible()
    checked["signin-error"] = axe_violations(page)
    sign_in(page)
    for path in (
        "/ui/versions",
        "/ui/versions/2/deploy",
        "/ui/rollback",
        "/ui/predict?view=fields",
        "/ui/live",
    ):
        page.goto(path)
        checked[path] = axe_violations(page)
    page.goto("/ui/predict")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#answer .label")).to_have_count(1)
    checked["predict-answer"] = axe_violations(page)
    page.get_by_label(re.compile("^Values for")).fill("x")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#predict-error")).to_be_visible()
    checked["predict-error"] = axe_violations(page)
    page.goto("/ui/predict?view=fields")
    screenshot(page, "predict-fields")
    assert {k: v for k, v in checked.items() if v} == {}


def test_axe_finds_violations_when_there_are_some(pages: Pages) -> None:
    """The accessibility check can fail: on a page with a known critical problem it reports it."""
    page = pages.new(bypass_csp=True)
    page.goto("/ui/signin")
    page.evaluate(
        "() => { const img = document.createElement('img'); img.src = 'data:,'; document.body.append(img) }"
    )
    assert "image-alt" in [v["id"] for v in axe_violations(page)]
