"""The dashboard at phone width, from the keyboard, with labels, and with calm refreshes."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Shot
from tests.browser.test_dashboard import submit, wait_for_status

PHONE_WIDTH = 390


def fits_the_width(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_every_page_fits_a_phone(phone: Page, api: httpx.Client, shot: Shot) -> None:
    failed = submit(api, "system.sleep", {"seconds": 0, "fail_times": 1, "permanent": True})
    wait_for_status(api, failed, "failed")
    # A queue with every policy set and a schedule, so their longest texts are on the pages.
    policies = {"rate_limit": {"max_starts": 1000, "per_seconds": 3600},
                "concurrency_limit": 25, "max_attempts": 10, "timeout_seconds": 5400,
                "backoff": {"base_seconds": 1.5, "cap_seconds": 3600, "jitter": 0.25},
                "retention": {"succeeded": {"max_age_seconds": 90000, "max_count": 100000}}}
    assert api.patch("/api/v1/queues/browser-phone", json=policies).status_code == 200
    schedule = {"cron": "*/15 8-18 * * 1-5", "timezone": "America/Argentina/Buenos_Aires",
                "job": {"type": "system.noop", "queue": "browser-phone"}}
    assert api.put("/api/v1/schedules/browser-phone", json=schedule).status_code in (200, 201)
    pages = [("queues", "Queues", "phone-queues"), ("jobs", "Jobs", "phone-jobs"),
             (f"jobs/{failed}", f"Job {failed[:8]}", "phone-job"),
             ("queues/browser-phone", "Queue browser-phone", "phone-queue"),
             ("schedules", "Schedules", "phone-schedules"),
             ("workers", "Workers", "phone-workers"), ("convert", "Convert a 3D model",
                                                        "phone-convert")]
    for route, heading, name in pages:
        phone.goto(f"/dashboard#/{route}")
        expect(phone.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(phone.locator("[aria-busy]")).to_have_count(0)
        if route.startswith("jobs/"):
            phone.get_by_text("Traceback of attempt 1").click()
        assert fits_the_width(phone), f"#{route} is wider than {PHONE_WIDTH} px"
        shot(phone, name)


def test_keyboard_skip_link_visible_focus_and_labels(page: Page, api: httpx.Client) -> None:
    page.goto("/dashboard#/jobs")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    outline = skip.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline not in ("none", ""), "the focused link shows no outline"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs")).to_be_focused()

    # The first control after the heading is the first view link, then the filters.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Recent")).to_be_focused()

    assert api.patch("/api/v1/queues/browser-labels", json={}).status_code == 200
    for route in ("workers", "convert", "queues", "queues/browser-labels", "schedules", "jobs"):
        page.goto(f"/dashboard#/{route}")
        expect(page.locator("main h1")).to_have_count(1)
        expect(page.locator("[aria-busy]")).to_have_count(0)
        unlabelled = page.evaluate("""() => [...document.querySelectorAll(
            'input, select, textarea, button, progress')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim())
            .map(el => el.outerHTML)""")
        assert unlabelled == [], f"#{route} has controls without a label: {unlabelled}"

    # Navigating moves focus to the new page's heading, and marks the current section.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workers").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Workers")).to_be_focused()
    expect(page.get_by_role("link", name="Workers")).to_have_attribute("aria-current", "page")
    expect(page).to_have_title(re.compile(r"^Workers · "))


def test_refreshes_are_calm_and_stop_while_the_tab_is_hidden(page: Page, api: httpx.Client
                                                              ) -> None:
    # Only the answer's status: a live stream never ends, so its body is not read.
    with api.stream("GET", "/api/v1/events", headers={"accept": "text/event-stream"},
                    timeout=5) as events_route:
        has_events = events_route.status_code == 200
    calls: list[float] = []
    page.on("request", lambda r: calls.append(time.monotonic())
            if r.url.endswith("/api/v1/queues") else None)

    page.goto("/dashboard#/queues")
    expect(page.locator("#live-status")).to_have_text(
        "Live" if has_events else "Refreshing every 5 s")
    calls.clear()
    page.wait_for_timeout(11_000)
    # Every 5 s while the stream is unavailable (every 15 s while it is live): 2 in 11 s.
    assert len(calls) <= 3, f"{len(calls)} refreshes in 11 s"
    if not has_events:
        assert len(calls) >= 2, "the page did not refresh while the event stream is missing"

    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    expect(page.locator("#live-status")).to_have_text("Paused while hidden")
    calls.clear()
    page.wait_for_timeout(6_000)
    assert calls == [], "the page refreshed while hidden"

    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(1_000)
    assert len(calls) == 1, "showing the tab again refreshes it once, at once"
