"""The dashboard's browser tests: a real `jobq serve` and `jobq worker` on a database of their
own, and Debian's headless Chromium driven by Playwright.

Playwright's own browser downloads are never used: the browser is the system's chromium (or the
one CHROMIUM_PATH names). Without it these tests fail, saying how to install it. Screenshots go
to $JOBQ_ARTIFACTS/browser (default tests/artifacts/browser), and a failing test leaves one too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from service import auth
from service.db import admin, migrate
from tests.conftest import new_database
from tests.support import serve_and_work

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
WORKER_NAME = "browser-worker"

Shot = Callable[..., Path]
T = TypeVar("T")


def chromium_path() -> str:
    """Debian's chromium, or CHROMIUM_PATH; fails the test (never skips) when there is none."""
    configured = os.environ.get("CHROMIUM_PATH")
    candidates = (configured,) if configured else CHROMIUM_CANDIDATES
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    where = f"CHROMIUM_PATH={configured} is not an executable" if configured else (
        f"none of {', '.join(CHROMIUM_CANDIDATES)} exists")
    pytest.fail(
        f"The dashboard's browser tests need a Chromium and {where}. Install Debian's: "
        "`apt-get update && apt-get install -y chromium` (.ci/run does), or set CHROMIUM_PATH "
        "to a Chromium binary. (`playwright install` is not used.)",
        pytrace=False,
    )


@dataclass
class Service:
    url: str
    logs: Path
    worker_pid: int
    admin_key: str
    """An admin key: the API's authentication is on, as `jobq serve` has it by default."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.logs.glob("*.log")))


def aside(function: Callable[..., T], *args: Any) -> T:
    """Call on a thread of its own: Playwright's sync API keeps an event loop running on this
    thread, where neither pytest-asyncio nor Alembic's async engine could run another."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


@pytest.fixture(scope="package")
def browser_database_url(server_url: str) -> Iterator[str]:
    """A database of the browser tests' own, so the pages show only the jobs they made."""
    url = aside(asyncio.run, new_database(server_url, prefix="jobq_browser"))
    aside(migrate.upgrade, url)
    yield url
    aside(asyncio.run, admin.drop_database(server_url, admin.database_name(url)))


@pytest.fixture(scope="package")
def service(browser_database_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    """`jobq serve` (authentication on) and one `jobq worker` as real processes, with an admin
    key the tests log in with."""
    logs = tmp_path_factory.mktemp("browser-service")
    admin_key = aside(asyncio.run, create_key(browser_database_url, "admin"))
    with serve_and_work(browser_database_url, logs, WORKER_NAME,
                        env={"JOBQ_AUTH": "on"}) as (url, processes):
        service = Service(url, logs, processes[1].pid, admin_key)
        wait_until_ready(service)
        yield service


async def create_key(database_url: str, role: str, name: str = "browser-tests") -> str:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        _, secret = await auth.create_key(conn, f"{name}-{role}", role)
    finally:
        await conn.close()
    return secret


def wait_until_ready(service: Service) -> None:
    """The API answers /ready and the worker has registered."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if (httpx.get(f"{service.url}/ready").status_code == 200
                    and httpx.get(f"{service.url}/api/v1/workers",
                                  headers=service.headers).json()["items"]):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.2)


@pytest.fixture
def api(service: Service) -> Iterator[httpx.Client]:
    """The REST API, to set the scene and to check what the dashboard did."""
    with httpx.Client(base_url=service.url, timeout=30, headers=service.headers) as client:
        yield client


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Playwright launches it without its sandbox, which root cannot use)."""
    executable = chromium_path()  # before Playwright starts, so a missing browser reads plainly
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: $JOBQ_ARTIFACTS/browser, by default tests/artifacts/browser."""
    path = Path(os.environ.get("JOBQ_ARTIFACTS", ROOT / "tests" / "artifacts")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):  # what is there afterwards is this run's
        old.unlink()
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    report = yield
    if report.when == "call":
        item.failed_call = report.failed  # type: ignore[attr-defined]
    return report


def open_page(browser: Browser, service: Service, width: int, height: int,
              log_in: bool = True) -> tuple[Page, list]:
    """A tab on the dashboard's origin, logged in as the admin (its session cookie set by
    POST /api/v1/session, as the login form does: tests/browser/test_login.py fills that)."""
    context = browser.new_context(base_url=service.url, accept_downloads=True,
                                  viewport={"width": width, "height": height})
    if log_in:
        answer = context.request.post("/api/v1/session", data={"key": service.admin_key})
        assert answer.ok, answer.text()
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


@pytest.fixture
def page(browser: Browser, service: Service, artifacts: Path,
         request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh desktop-sized tab on the dashboard's origin. An uncaught script error fails the
    test, and a failed test leaves a screenshot of where it stopped."""
    page, errors = open_page(browser, service, 1280, 800)
    yield page
    if getattr(request.node, "failed_call", False):
        page.screenshot(path=artifacts / f"FAILED-{request.node.name}.png", full_page=True)
    page.context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def phone(browser: Browser, service: Service, artifacts: Path,
          request: pytest.FixtureRequest) -> Iterator[Page]:
    """A 390 px wide tab, as a phone shows the page."""
    page, errors = open_page(browser, service, 390, 844)
    yield page
    if getattr(request.node, "failed_call", False):
        page.screenshot(path=artifacts / f"FAILED-{request.node.name}-phone.png", full_page=True)
    page.context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def shot(artifacts: Path) -> Shot:
    """Save the whole page, cut just below its content, as <artifacts>/<name>.png."""
    def take(page: Page, name: str) -> Path:
        path = artifacts / f"{name}.png"
        width, bottom = page.evaluate(
            "[document.documentElement.clientWidth,"
            " Math.ceil(document.querySelector('main').getBoundingClientRect().bottom"
            "           + window.scrollY)]")
        page.screenshot(path=path, full_page=True,
                        clip={"x": 0, "y": 0, "width": width, "height": max(bottom, 200)})
        return path
    return take
