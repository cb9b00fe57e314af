"""The console in a real browser: Debian's Chromium driven by Playwright, against a live stack (a real MLflow
with auth, two signed versions, a real `modelops serve` with an admin token and the operator's credential).

`playwright install` cannot download browsers here; CI installs Debian's `chromium` (see .ci/run)."""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_TOKEN, model_server, train_version
from tests.support import MlflowService, Service, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "img"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# The server polls the alias this often in the browser stack; waits for an alias move to show are multiples of it.
POLL_INTERVAL_S = 0.5
# A deploy or rollback loads, verifies and warms a version before the alias moves: as long as a server
# start may take (Service.timeout_s), which includes the first load.
ACTION_TIMEOUT_S = 90.0
# The console samples the server's metrics every 5 s; the Live numbers appear after two samples.
LIVE_TIMEOUT_S = 30.0
# A rollout started or aborted here shows once the server's follower has polled the registry (woken at once by
# the action; a few polls of slack); loading the challenger after that poll takes as long as any load.
ROLLOUT_TIMEOUT_S = 20 * POLL_INTERVAL_S
NAVIGATION_TIMEOUT_S = 30.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Debian's Chromium with Playwright (needs /usr/bin/chromium)"
    )


@dataclass
class Stack:
    server: Service
    name: str
    tracking_uri: str

    @property
    def url(self) -> str:
        return str(self.server.uri)  # type: ignore[attr-defined]

    def served_version(self) -> str | None:
        response = httpx.get(f"{self.url}/readyz", timeout=5)
        return response.json().get("model_version") if response.status_code == 200 else None

    def wait_version(self, version: str, timeout_s: float = ACTION_TIMEOUT_S) -> None:
        wait_for(lambda: self.served_version() == version, timeout_s, f"the server to serve v{version}")


@pytest.fixture(scope="module")
def stack(tracking_server: MlflowService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """v1 is the champion; v2 is registered but not promoted (so the console has something to deploy)."""
    name = f"console-{uuid.uuid4().hex[:8]}"
    tracking_server.grant(name)
    uri = tracking_server.uri  # type: ignore[attr-defined]
    train_version(uri, name)
    train_version(uri, name, promote="never", algorithm="random_forest", params=["n_estimators=5"], seed=7)
    server = model_server(
        tmp_path_factory.mktemp("console-server"),
        uri,
        name,
        extra_env={"MODELOPS_POLL_INTERVAL_S": str(POLL_INTERVAL_S), "MODELOPS_VERSIONS_CACHE_S": "0"},
    ).start()
    stack = Stack(server, name, uri)
    try:
        stack.wait_version("1")
        yield stack
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


class Pages:
    """Browser contexts of one test; on failure, prints what helps (console messages, page text, server log)."""

    def __init__(self, browser: Any, stack: Stack) -> None:
        self.browser = browser
        self.stack = stack
        self.contexts: list[Any] = []
        self.messages: list[str] = []

    def new(self, *, width: int = 1200, height: int = 900, bypass_csp: bool = False) -> Any:
        context = self.browser.new_context(
            base_url=self.stack.url, viewport={"width": width, "height": height}, bypass_csp=bypass_csp
        )
        context.set_default_timeout(NAVIGATION_TIMEOUT_S * 1000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))
        return page

    def report(self) -> str:
        lines = ["--- browser console ---", *self.messages[-30:]]
        for context in self.contexts:
            for page in context.pages:
                try:
                    lines += [f"--- page {page.url} ---", page.inner_text("body")[:3000]]
                except Exception as exc:
                    lines.append(f"--- page {page.url}: {exc}")
        lines += ["--- server log ---", self.stack.server.tail(60)]
        return "\n".join(lines)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(chromium: Any, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Pages]:
    opened = Pages(chromium, stack)
    yield opened
    if request.node.stash.get(FAILED, False):
        print(opened.report())
    opened.close()


def sign_in(page: Any, token: str = ADMIN_TOKEN) -> None:
    page.goto("/ui/signin")
    page.get_by_label("Admin token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").first.click()
    page.wait_for_url("**/ui/versions")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now (needs a bypass_csp context:
    axe is injected as an inline script, which the console's CSP forbids)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
