"""Logging the dashboard in and out with an API key, in a real browser against `jobq serve` with
authentication on: the key is exchanged for an HttpOnly session cookie, changes carry the CSRF
token, and a submitter's session sees its own jobs only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Service, Shot, aside, create_key, open_page


@pytest.fixture
def anonymous(browser: Browser, service: Service) -> Iterator[Page]:
    """A tab that has not logged in."""
    page, errors = open_page(browser, service, 1280, 800, log_in=False)
    yield page
    page.context.close()
    assert not errors, f"script errors on the page: {errors}"


def test_log_in_with_a_key_then_log_out(anonymous: Page, service: Service, api: httpx.Client,
                                        browser_database_url: str, shot: Shot) -> None:
    page = anonymous
    page.goto("/dashboard#/jobs")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, "login")
    # Without a session the API answers nothing about jobs.
    assert page.context.request.get("/api/v1/jobs").status == 401

    page.get_by_label("API key").fill("jobq_not-a-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_contain_text("not valid")

    operator = aside(asyncio.run, create_key(browser_database_url, "operator", "login-test"))
    page.get_by_label("API key").fill(operator)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("login-test-operator (operator)")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["jobq_session"]["httpOnly"] and cookies["jobq_session"]["sameSite"] == "Strict"
    assert operator not in str(page.context.cookies())
    assert page.evaluate("document.cookie") == ""  # the session is out of the page's reach

    # A change from the page carries the CSRF token: pausing a queue works...
    page.goto("/dashboard#/queues")
    api.post("/api/v1/jobs", json={"type": "system.noop", "queue": "login-queue",
                                   "delay_seconds": 3600})
    row = page.locator('tr[data-row="login-queue"]')
    row.get_by_role("button", name="Pause").click()
    expect(row.get_by_role("button", name="Resume")).to_be_visible()
    # ...and the same change without it is refused, from the same browser.
    refused = page.context.request.post("/api/v1/queues/login-queue/resume")
    assert refused.status == 403 and "X-CSRF-Token" in refused.json()["detail"]
    api.post("/api/v1/queues/login-queue/resume")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.context.request.get("/api/v1/jobs").status == 401


def test_a_submitters_session_sees_its_own_jobs_only(anonymous: Page, api: httpx.Client,
                                                     browser_database_url: str) -> None:
    page = anonymous
    theirs = api.post("/api/v1/jobs", json={"type": "system.noop", "queue": "not-mine",
                                            "delay_seconds": 3600}).json()["id"]
    submitter = aside(asyncio.run, create_key(browser_database_url, "submitter", "own"))
    mine = httpx.post(f"{api.base_url}/api/v1/jobs",
                      headers={"Authorization": f"Bearer {submitter}"},
                      json={"type": "system.noop", "delay_seconds": 3600}).json()["id"]
    page.goto("/dashboard")
    page.get_by_label("API key").fill(submitter)
    page.get_by_role("button", name="Log in").click()
    page.goto("/dashboard#/jobs")
    expect(page.locator(f'tr[data-row="{mine}"]')).to_be_visible()
    expect(page.locator(f'tr[data-row="{theirs}"]')).to_have_count(0)
    # Queues and workers are an operator's: not offered to a submitter.
    expect(page.get_by_role("link", name="Queues")).to_be_hidden()
    expect(page.get_by_role("link", name="Workers")).to_be_hidden()
    page.goto(f"/dashboard#/jobs/{theirs}")
    expect(page.locator("main")).to_contain_text(re.compile("No job", re.I))
