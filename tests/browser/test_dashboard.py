"""What a person does on the dashboard, in a real browser against a real API and worker:
convert a mesh, cancel a running job, pause and resume a queue, read a failed job's traceback."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import CORPUS, Shot


def submit(api: httpx.Client, job_type: str, payload: dict[str, Any], **extra: Any) -> str:
    response = api.post("/api/v1/jobs", json={"type": job_type, "payload": payload, **extra})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_status(api: httpx.Client, job_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (job := api.get(f"/api/v1/jobs/{job_id}").json())["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} is {job['status']}, not {status}"
        time.sleep(0.2)
    return job


def test_convert_uploads_a_mesh_follows_it_and_downloads_the_glb(
        page: Page, api: httpx.Client, shot: Shot, tmp_path: Path) -> None:
    page.goto("/dashboard#/convert")
    expect(page.get_by_role("heading", name="Convert a 3D model")).to_be_visible()
    page.get_by_label("Model files").set_input_files(CORPUS / "20mm-xyz-cube.stl")
    page.get_by_label("Convert to").select_option("glb")
    # A fresh conversion, not a reuse of one an earlier run of this test made.
    page.get_by_label("Reuse an earlier conversion").uncheck()
    shot(page, "convert-form")
    page.get_by_role("button", name="Upload and convert").click()

    expect(page.locator("#upload-progress")).to_have_js_property("value", 100)
    expect(page.get_by_text(re.compile(r"^Uploaded \d+(\.\d)? kB$"))).to_be_visible()
    job_link = page.locator("#convert-job")
    expect(job_link).to_be_visible()
    download_link = page.get_by_role("link", name=re.compile(r"^Download the glb"))
    expect(download_link).to_be_visible(timeout=60_000)
    expect(page.locator("#conversion-progress")).to_have_js_property("value", 100)
    expect(page.locator(".convert-progress")).to_contain_text("succeeded")
    shot(page, "convert-done")

    with page.expect_download() as download_info:
        download_link.click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    data = saved.read_bytes()
    assert data[:4] == b"glTF"
    assert saved.suffix == ".glb"

    job_id = job_link.get_attribute("href").rsplit("/", 1)[-1]
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["type"] == "mesh.convert" and job["status"] == "succeeded"
    assert job["payload"]["reuse"] is False
    assert data == api.get(f"/api/v1/jobs/{job_id}/output").content


def test_cancel_a_running_job(page: Page, api: httpx.Client, shot: Shot) -> None:
    job_id = submit(api, "system.sleep", {"seconds": 30})
    page.goto(f"/dashboard#/jobs/{job_id}")
    state = page.locator("#job-state")
    expect(state).to_have_text(re.compile(r"^running"), timeout=20_000)
    # Progress moves on the open page, with no reload.
    expect(page.locator(".summary .progress-text")).to_have_text(
        re.compile(r"^[1-9]\d?% · sleeping"), timeout=15_000)
    shot(page, "job-running")

    page.get_by_role("button", name="Cancel").click()
    # Well inside the 30 s the job would sleep: only a cancellation can end it this soon.
    expect(state).to_have_text(re.compile(r"^cancelled"), timeout=20_000)
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.get_by_role("button", name="Retry")).to_be_enabled()
    assert api.get(f"/api/v1/jobs/{job_id}").json()["status"] == "cancelled"
    events = [e["event"] for e in api.get(f"/api/v1/jobs/{job_id}/history").json()["items"]]
    assert "cancelled" in events
    expect(page.locator(".timeline")).to_contain_text("cancelled")
    shot(page, "job-cancelled")


def test_pause_and_resume_a_queue(page: Page, api: httpx.Client, shot: Shot) -> None:
    queue = "browser-pause"
    # A job far in the future makes the queue exist without running anything in it.
    submit(api, "system.noop", {}, queue=queue, delay_seconds=3600)
    page.goto("/dashboard#/queues")
    row = page.locator(f"tr[data-row='{queue}']")
    expect(row.locator(".badge")).to_have_text("active")

    row.get_by_role("button", name=f"Pause queue {queue}").click()
    expect(row.locator(".badge")).to_have_text("paused")
    assert queue_state(api, queue)["paused"] is True

    # Paused for real: a job submitted now waits, and the page counts it as queued.
    held = submit(api, "system.noop", {}, queue=queue)
    expect(row.locator("td[data-label='Queued']")).to_have_text("1", timeout=15_000)
    assert api.get(f"/api/v1/jobs/{held}").json()["status"] == "queued"
    expect(page.get_by_role("status").filter(has_text=f"Queue {queue} paused.")).to_be_visible()
    shot(page, "queues-paused")

    # Resume from the keyboard: the button kept its focus through the refreshes.
    resume = row.get_by_role("button", name=f"Resume queue {queue}")
    resume.focus()
    page.keyboard.press("Enter")
    expect(row.locator(".badge")).to_have_text("active")
    assert queue_state(api, queue)["paused"] is False
    wait_for_status(api, held, "succeeded")
    expect(row.locator("td[data-label='Succeeded']")).to_have_text("1", timeout=15_000)
    shot(page, "queues")


def queue_state(api: httpx.Client, name: str) -> dict:
    return next(q for q in api.get("/api/v1/queues").json()["items"] if q["name"] == name)


def test_open_a_failed_jobs_traceback(page: Page, api: httpx.Client, shot: Shot) -> None:
    job_id = submit(api, "system.sleep", {"seconds": 0, "fail_times": 1, "permanent": True})
    wait_for_status(api, job_id, "failed")

    page.goto("/dashboard#/jobs")
    page.get_by_role("navigation", name="Views").get_by_role("link", name="Failed").click()
    expect(page.get_by_role("heading", name="Failed jobs")).to_be_visible()
    expect(page.get_by_label("Status")).to_have_value("failed")
    shot(page, "jobs-failed")
    page.get_by_role("link", name=job_id[:8]).click()

    expect(page.get_by_role("heading", name=f"Job {job_id[:8]}")).to_be_visible()
    expect(page.locator("#job-state")).to_have_text(re.compile(r"^failed"))
    expect(page.locator(".error-box")).to_contain_text("PermanentJobError")
    traceback = page.locator("pre.traceback")
    expect(traceback).to_be_hidden()
    page.get_by_text("Traceback of attempt 1").click()
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("PermanentJobError: failing on purpose")
    shot(page, "job-traceback")
