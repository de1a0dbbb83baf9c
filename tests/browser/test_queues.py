"""Queue policies and schedules on the dashboard, in a real browser against a real API and
worker: the policies read next to the counts, a queue's page changes them (only the fields the
person changed are sent; a bad value shows the API's message and changes nothing), and the
schedules page shows ticks and pauses a schedule."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Shot


def queue(api: httpx.Client, name: str) -> dict:
    response = api.get(f"/api/v1/queues/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def patch_queue(api: httpx.Client, name: str, body: dict) -> dict:
    response = api.patch(f"/api/v1/queues/{name}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_queues_page_shows_each_queues_policies(page: Page, api: httpx.Client, shot: Shot
                                                 ) -> None:
    name = "browser-limited"
    patch_queue(api, name, {"rate_limit": {"max_starts": 10, "per_seconds": 1},
                            "concurrency_limit": 2, "max_attempts": 5, "timeout_seconds": 90,
                            "backoff": {"base_seconds": 2, "cap_seconds": 600},
                            "retention": {"failed": {"max_count": 500},
                                          "cancelled": {"max_age_seconds": None}}})
    page.goto("/dashboard#/queues")
    row = page.locator(f"tr[data-row='policies:{name}']")
    expected = {
        "Rate limit": "10 starts per 1 s",
        "Concurrency limit": "2 at once",
        "Attempts": "5",
        "Timeout": "1 min 30 s",
        "Backoff": "base 2 s, cap 10 min",
        "Keep succeeded": "1 d, newest 1,000",  # the defaults of docs/queues.md
        "Keep failed": "7 d, newest 500",
        "Keep cancelled": "forever",
    }
    for label, text in expected.items():
        expect(row.locator(f"td[data-label='{label}']")).to_have_text(text)
    # The counts table still has the queue, with its state, beside the policies.
    expect(page.locator(f"tr[data-row='{name}'] .badge")).to_have_text("active")
    shot(page, "queues-policies")

    # A change made elsewhere shows on the next refresh, with no reload.
    patch_queue(api, name, {"concurrency_limit": 3})
    expect(row.locator("td[data-label='Concurrency limit']")).to_have_text("3 at once",
                                                                           timeout=20_000)

    row.get_by_role("link", name=f"Change the settings of queue {name}").click()
    expect(page.get_by_role("heading", name=f"Queue {name}", exact=True)).to_be_focused()
    expect(page.get_by_label("Concurrency limit")).to_have_value("3")


@pytest.fixture
def settings_queue(api: httpx.Client) -> Iterator[str]:
    name = "browser-settings"
    patch_queue(api, name, {"rate_limit": {"max_starts": 10, "per_seconds": 1},
                            "concurrency_limit": 2, "max_attempts": 5,
                            "retention": {"failed": {"max_count": 500}}})
    yield name


def test_change_a_queues_settings_from_its_page(page: Page, api: httpx.Client, shot: Shot,
                                                settings_queue: str) -> None:
    name = settings_queue
    page.goto(f"/dashboard#/queues/{name}")
    expect(page.get_by_role("heading", name=f"Queue {name}", exact=True)).to_be_visible()
    policies = page.locator("#queue-policies")
    expect(policies).to_contain_text("10 starts per 1 s")
    expect(page.get_by_label("Rate limit: job starts")).to_have_value("10")
    expect(page.get_by_label("Rate limit: per seconds")).to_have_value("1")
    expect(page.get_by_label("Failed: keep the newest")).to_have_value("500")
    expect(page.get_by_label("Succeeded: keep for (seconds)")).to_have_value("86400")

    # Someone else changes the attempts meanwhile: the form sends only what this person
    # changes, so that change survives.
    patch_queue(api, name, {"max_attempts": 7})

    page.get_by_label("Concurrency limit").fill("4")
    page.get_by_label("Rate limit: job starts").fill("")
    page.get_by_label("Rate limit: per seconds").fill("")
    page.get_by_label("Timeout (seconds)").fill("90")
    cancelled_count = page.get_by_label("Cancelled: keep the newest")
    cancelled_count.fill("20")
    cancelled_count.press("Enter")  # submits the form, as any text field does
    expect(page.get_by_role("status").filter(has_text=f"Settings of queue {name} saved.")
           ).to_be_visible()

    saved = queue(api, name)
    assert saved["concurrency_limit"] == 4
    assert saved["rate_limit"] is None
    assert saved["timeout_seconds"] == 90
    assert saved["max_attempts"] == 7
    assert saved["retention"]["cancelled"] == {"max_age_seconds": 86400, "max_count": 20}
    assert saved["retention"]["failed"]["max_count"] == 500
    expect(policies).to_contain_text("4 at once")
    expect(policies.locator("div").filter(has_text="Rate limit")).to_contain_text("none")
    expect(policies).to_contain_text("1 min 30 s")
    shot(page, "queue-settings")

    # A value the API refuses: its message by the field, and nothing written.
    concurrency = page.get_by_label("Concurrency limit")
    concurrency.fill("0")
    page.get_by_role("button", name="Save settings").click()
    alert = page.get_by_role("alert").filter(has_text="Could not save the settings")
    expect(alert).to_contain_text("concurrency_limit: must be between 1 and 100000")
    expect(concurrency).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#qs-concurrency-error")).to_have_text("must be between 1 and 100000")
    assert queue(api, name)["concurrency_limit"] == 4
    shot(page, "queue-settings-refused")

    # Half a rate limit is caught before anything is sent; undoing puts the saved values back.
    concurrency.fill("4")
    page.get_by_label("Rate limit: job starts").fill("5")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#qs-rate-period-error")).to_have_text(
        "give both the starts and the seconds, or leave both empty")
    expect(page.get_by_label("Rate limit: per seconds")).to_be_focused()
    assert queue(api, name)["rate_limit"] is None
    page.get_by_role("button", name="Undo changes").click()
    expect(page.get_by_label("Rate limit: job starts")).to_have_value("")
    expect(page.locator("#qs-rate-period-error")).to_have_text("")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status").filter(has_text="Nothing to save")).to_be_visible()


def test_pause_and_resume_from_a_queues_page(page: Page, api: httpx.Client) -> None:
    name = "browser-queue-page"
    patch_queue(api, name, {"paused": False})
    page.goto(f"/dashboard#/queues/{name}")
    state = page.locator("#queue-state")
    expect(state.locator(".badge")).to_have_text("active")
    page.get_by_role("button", name=f"Pause queue {name}").click()
    expect(state.locator(".badge")).to_have_text("paused")
    assert queue(api, name)["paused"] is True
    resume = page.get_by_role("button", name=f"Resume queue {name}")
    resume.focus()
    page.keyboard.press("Enter")
    expect(state.locator(".badge")).to_have_text("active")
    assert queue(api, name)["paused"] is False

    page.goto("/dashboard#/queues/no-such-queue")
    expect(page.get_by_text("No queue named 'no-such-queue'")).to_be_visible()
    expect(page.get_by_role("heading", name="Change settings")).to_have_count(0)


@pytest.fixture
def schedules(api: httpx.Client) -> Iterator[tuple[str, str]]:
    nightly, often = "browser-nightly", "browser-often"
    for name, body in [
        (nightly, {"cron": "30 2 * * *", "timezone": "Europe/Paris",
                   "job": {"type": "system.noop", "queue": "browser-schedules"}}),
        (often, {"interval_seconds": 2, "job": {"type": "system.noop",
                                                "queue": "browser-schedules"}}),
    ]:
        response = api.put(f"/api/v1/schedules/{name}", json=body)
        assert response.status_code in (200, 201), response.text
    yield nightly, often
    for name in (nightly, often):  # the 2 s schedule would keep making jobs for later tests
        api.delete(f"/api/v1/schedules/{name}")


def test_schedules_page_shows_ticks_and_pauses_a_schedule(
        page: Page, api: httpx.Client, shot: Shot, schedules: tuple[str, str]) -> None:
    nightly, often = schedules
    page.goto("/dashboard#/queues")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    expect(page.get_by_role("heading", name="Schedules", exact=True)).to_be_focused()

    row = page.locator(f"tr[data-row='{nightly}']")
    expect(row.locator("td[data-label='When']")).to_have_text("30 2 * * * (Europe/Paris)")
    expect(row.locator("td[data-label='Job']")).to_have_text("system.noop in browser-schedules")
    expect(row.locator("td[data-label='Next tick']")).to_have_text(re.compile(r"^in \d"))
    next_tick = api.get(f"/api/v1/schedules/{nightly}").json()["next_tick_at"]
    expect(row.locator("td[data-label='Next tick'] time")).to_have_attribute("datetime",
                                                                            next_tick)

    # The worker fires the 2 s schedule; the page links the job it made.
    fast = page.locator(f"tr[data-row='{often}']")
    expect(fast.locator("td[data-label='When']")).to_have_text("every 2 s")
    job_link = fast.locator("td[data-label='Last job'] a")
    expect(job_link).to_be_visible(timeout=20_000)
    job_id = job_link.get_attribute("title")
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["type"] == "system.noop" and job["queue"] == "browser-schedules"
    expect(fast.locator("td[data-label='Last tick']")).to_have_text(re.compile(r"ago$"))
    shot(page, "schedules")

    fast.get_by_role("button", name=f"Pause schedule {often}").click()
    expect(fast.locator(".badge")).to_have_text("paused")
    expect(page.get_by_role("status").filter(has_text=f"Schedule {often} paused.")).to_be_visible()
    paused = api.get(f"/api/v1/schedules/{often}").json()
    assert paused["paused"] is True and paused["interval_seconds"] == 2
    assert paused["job"]["queue"] == "browser-schedules"
    expect(fast.locator("td[data-label='Next tick']")).to_have_text("—")
    # Paused for real: no new job while it stays paused (the last one stays the last).
    last = paused["last_job_id"]
    time.sleep(3)
    assert api.get(f"/api/v1/schedules/{often}").json()["last_job_id"] == last

    resume = fast.get_by_role("button", name=f"Resume schedule {often}")
    resume.focus()
    page.keyboard.press("Enter")
    expect(fast.locator(".badge")).to_have_text("active")
    assert api.get(f"/api/v1/schedules/{often}").json()["paused"] is False
