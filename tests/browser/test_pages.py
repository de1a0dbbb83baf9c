"""The jobs list (filters, pages, lookup), a job's retry and delete buttons, and the workers
page, in a real browser against a real API and worker."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import WORKER_NAME, Service, Shot
from tests.browser.test_dashboard import submit, wait_for_status

PAGE_SIZE = 25  # the jobs page's, in service/dashboard/js/pages/jobs.js


def test_jobs_filters_pages_and_lookup(page: Page, api: httpx.Client, shot: Shot) -> None:
    queue = "browser-list"
    jobs = [{"type": "system.noop", "payload": {}, "queue": queue, "delay_seconds": 3600}
            for _ in range(PAGE_SIZE + 5)]
    created = api.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert created.status_code == 201, created.text
    ids = set(created.json()["ids"])

    page.goto("/dashboard#/jobs")
    page.get_by_label("Status").select_option("scheduled")
    page.get_by_label("Queue").select_option(queue)
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"#/jobs\?status=scheduled&queue=browser-list$"))
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(PAGE_SIZE)
    first_page = set(rows.evaluate_all("rows => rows.map(r => r.dataset.row)"))

    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(5)
    second_page = set(rows.evaluate_all("rows => rows.map(r => r.dataset.row)"))
    assert first_page | second_page == ids and not first_page & second_page
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="← Newest").click()
    expect(rows).to_have_count(PAGE_SIZE)

    page.get_by_label("Type").fill("no.such.type")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()

    lookup = page.get_by_label("Job id")
    lookup.fill("not-an-id")
    lookup.press("Enter")
    expect(page.locator("#lookup-error")).to_contain_text("A job id looks like")
    some_id = sorted(ids)[0]
    lookup.fill(some_id.upper())
    lookup.press("Enter")
    expect(page.get_by_role("heading", name=f"Job {some_id[:8]}")).to_be_visible()
    expect(page.locator("#job-state")).to_have_text(re.compile(r"^scheduled"))


def test_retry_then_delete_a_failed_job(page: Page, api: httpx.Client) -> None:
    # Fails its first attempt for good; a retry's fresh attempt then succeeds.
    job_id = submit(api, "system.sleep", {"seconds": 0, "fail_times": 1, "permanent": True})
    wait_for_status(api, job_id, "failed")
    page.goto(f"/dashboard#/jobs/{job_id}")
    state = page.locator("#job-state")
    expect(state).to_have_text(re.compile(r"^failed"))
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

    page.get_by_role("button", name="Retry").click()
    expect(state).to_have_text(re.compile(r"^succeeded"), timeout=20_000)
    expect(page.get_by_role("heading", name="Attempt 2: succeeded")).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("retried")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"#/jobs$"))
    expect(page.get_by_role("status").filter(has_text=f"Job {job_id[:8]} deleted.")).to_be_visible()
    assert api.get(f"/api/v1/jobs/{job_id}").status_code == 404

    page.goto(f"/dashboard#/jobs/{job_id}")
    expect(page.get_by_text("No job has this id")).to_be_visible()


def test_workers_page_shows_the_live_worker(
        page: Page, api: httpx.Client, service: Service, shot: Shot) -> None:
    job_id = submit(api, "system.sleep", {"seconds": 8})
    page.goto("/dashboard#/workers")
    row = page.locator("tbody tr").filter(has_text=WORKER_NAME)
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label='PID']")).to_have_text(str(service.worker_pid))
    expect(row.locator("td[data-label='Queues']")).to_have_text("all")
    # The running job shows up on a later refresh, with a link to it.
    expect(row.get_by_role("link", name=job_id[:8])).to_be_visible(timeout=15_000)
    shot(page, "workers")
    api.post(f"/api/v1/jobs/{job_id}/cancel")
