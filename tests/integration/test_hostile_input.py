"""Hostile and malformed input (issue 13): every answer is a 4xx problem+json naming what to
fix, never a 500, and a request that fails creates nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import pytest

import service
from service.backend import Backend

PROJECT = Path(service.__file__).resolve().parent.parent

PROBLEM = "application/problem+json"
SLEEP = {"type": "system.sleep", "payload": {"seconds": 1}}


async def job_count(backend: Backend) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval("SELECT count(*) FROM jobs")


def assert_problem(response, *statuses: int, field: str | None = None) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == response.status_code
    assert body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# -- JSON depth ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
async def test_deeply_nested_payload_is_refused(client, backend, depth):
    body = '{"type": "system.sleep", "payload": {"x": ' + "[" * depth + "]" * depth + "}}"
    response = await client.post("/api/v1/jobs", content=body,
                                 headers={"content-type": "application/json"})
    assert_problem(response, 400, 422)
    assert "deep" in response.json()["detail"]
    assert await job_count(backend) == 0


async def test_nesting_within_the_limit_is_accepted(client):
    body = {"type": "system.sleep", "payload": {"seconds": 0.1}}
    # 60 levels below the payload's own object: inside the limit of 64.
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 201


async def test_deeply_nested_batch_is_refused(client, backend):
    body = '{"jobs": [{"type": "system.sleep", "payload": {"x": ' + "[" * 1000 + "]" * 1000
    body += "}}]}"
    response = await client.post("/api/v1/jobs/batch", content=body,
                                 headers={"content-type": "application/json"})
    assert_problem(response, 400, 422)
    assert await job_count(backend) == 0


# -- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("run_at", [
    "0001-01-01T00:00:00+01:00",  # overflows converted to UTC
    "9999-12-31T23:59:59-01:00",  # overflows converted to UTC
    "0001-01-01T00:00:00Z",  # year 1: valid, but outside the accepted range
    "9999-12-31T00:00:00Z",
    "1900-01-01T00:00:00Z",
])
async def test_run_at_out_of_range_is_422_and_creates_nothing(client, backend, run_at):
    response = await client.post("/api/v1/jobs", json={**SLEEP, "run_at": run_at})
    assert_problem(response, 422, field="run_at")
    assert await job_count(backend) == 0
    # reads keep working
    assert (await client.get("/api/v1/jobs")).status_code == 200
    assert (await client.get("/api/v1/queues")).status_code == 200


async def test_run_at_out_of_range_in_a_batch_names_the_job(client, backend):
    response = await client.post("/api/v1/jobs/batch", json={"jobs": [
        SLEEP, {**SLEEP, "run_at": "0001-01-01T00:00:00+01:00"}]})
    assert_problem(response, 422, field="jobs[1].run_at")
    assert await job_count(backend) == 0


async def test_run_at_in_range_is_accepted(client):
    response = await client.post("/api/v1/jobs", json={**SLEEP, "run_at": "2090-01-01T00:00:00Z"})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "scheduled"


@pytest.mark.parametrize("name", ["created_after", "created_before"])
@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_date_filters_that_overflow_are_4xx(client, name, value):
    response = await client.get("/api/v1/jobs", params={name: value})
    assert_problem(response, 400, 422, field=name)


@pytest.mark.parametrize("value", [
    ["0001-01-01T00:00:00+01:00", "6f1c1c1e-8a8b-4c43-9d0e-6c1f4d9c5b1a"],
    ["9999-12-31T23:59:59-01:00", "6f1c1c1e-8a8b-4c43-9d0e-6c1f4d9c5b1a"],
    ["2026-01-01T00:00:00+00:00", 5],
    ["2026-01-01T00:00:00+00:00", None],
    ["2026-01-01T00:00:00+00:00", ["a"]],
    [5, "6f1c1c1e-8a8b-4c43-9d0e-6c1f4d9c5b1a"],
    {"a": 1, "b": 2},
    "x",
])
async def test_hostile_cursors_are_422(client, value):
    response = await client.get("/api/v1/jobs", params={"cursor": cursor(value)})
    assert_problem(response, 422, field="cursor")


async def test_cursor_with_nul_is_422(client):
    response = await client.get(
        "/api/v1/jobs", params={"cursor": cursor(["2026-01-01T00:00:00\u0000", "x"])})
    assert_problem(response, 422)


# -- NUL characters ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["type", "queue", "status", "cursor", "created_after"])
async def test_nul_in_a_query_filter_is_422_naming_it(client, name):
    response = await client.get("/api/v1/jobs", params={name: "a\u0000b"})
    assert_problem(response, 422, field=name)


async def test_nul_in_the_path_is_4xx(client):
    for path in ("/api/v1/jobs/a%00b", "/api/v1/queues/a%00b/pause", "/api/v2/status/a%00b",
                 "/api/v1/jobs/a%00b/history"):
        method = client.post if path.endswith("pause") else client.get
        response = await method(path)
        assert response.status_code in (404, 422), (path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM) or path.startswith(
            "/api/v2"), path


@pytest.mark.parametrize("field,value", [
    ("payload", {"seconds": 1, "note": "a\u0000b"}),
    ("queue", "a\u0000b"),
    ("lock", "a\u0000b"),
    ("queueing_lock", "a\u0000b"),
    ("callback_url", "http://x/\u0000"),
    ("type", "system.sleep\u0000"),
])
async def test_nul_in_the_body_is_422_naming_the_field(client, backend, field, value):
    response = await client.post("/api/v1/jobs", json={**SLEEP, field: value})
    assert_problem(response, 422)
    detail = json.dumps(response.json())
    assert field in detail, detail
    assert await job_count(backend) == 0


async def test_nul_in_a_payload_key_is_422(client, backend):
    response = await client.post("/api/v1/jobs",
                                 json={**SLEEP, "payload": {"seconds": 1, "k\u0000": 1}})
    assert_problem(response, 422)
    assert await job_count(backend) == 0


async def test_nul_in_the_idempotency_key_is_4xx(client, backend):
    response = await client.post("/api/v1/jobs", json=SLEEP,
                                 headers={"Idempotency-Key": "a\u0000b"})
    assert_problem(response, 400, 422)
    assert await job_count(backend) == 0


OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def multipart(disposition: bytes, content_type: bytes = b"text/plain") -> tuple[bytes, dict]:
    """A body written by hand: httpx escapes a NUL in a filename as %00, an attacker need not."""
    body = (b"--B\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nglb\r\n"
            b"--B\r\nContent-Disposition: form-data; " + disposition + b"\r\nContent-Type: "
            + content_type + b"\r\n\r\n" + OBJ + b"\r\n--B--\r\n")
    return body, {"content-type": "multipart/form-data; boundary=B"}


@pytest.mark.parametrize("route", ["/api/v1/conversions", "/api/v2/convert"])
@pytest.mark.parametrize("disposition,content_type", [
    (b'name="file"; filename="a\x00.obj"', b"text/plain"),
    (b'name="file"; filename="a.obj"', b"text/\x00plain"),
    (b'name="fi\x00le"; filename="a.obj"', b"text/plain"),
])
async def test_nul_in_a_part_header_is_422(client, backend, route, disposition, content_type):
    body, headers = multipart(disposition, content_type)
    response = await client.post(route, content=body, headers=headers)
    assert response.status_code == 422 or (route.startswith("/api/v2")
                                           and response.status_code == 400), response.text
    assert await job_count(backend) == 0


@pytest.mark.parametrize("field,value", [
    ("format", "glb\u0000"),
    ("options", '{"a": "\\u0000"}'),
    ("options", '{"a\\u0000": 1}'),
    ("options", "\u0000"),
    ("callback_url", "http://x/\u0000"),
    ("options", '{"a": ' + "[" * 1000 + "]" * 1000 + "}"),
])
async def test_hostile_form_fields_are_422_naming_them(client, backend, field, value):
    data = {"format": "glb", field: value}
    response = await client.post("/api/v1/conversions",
                                 files=[("file", ("a.obj", OBJ, "text/plain"))], data=data)
    assert_problem(response, 422)
    assert field in json.dumps(response.json())
    assert await job_count(backend) == 0


# -- names ---------------------------------------------------------------------------------


async def test_queue_names_fit_the_notify_channel(client, backend):
    limit = 63 - len("procrastinate_queue_v1#")
    ok = await client.post("/api/v1/jobs", json={**SLEEP, "queue": "q" * limit})
    assert ok.status_code == 201, ok.text
    for length in (limit + 1, 128):
        response = await client.post("/api/v1/jobs", json={**SLEEP, "queue": "q" * length})
        body = assert_problem(response, 422, field="queue")
        assert str(limit) in body["detail"]
    assert await job_count(backend) == 1
    response = await client.post(f"/api/v1/queues/{'q' * (limit + 1)}/pause")
    assert_problem(response, 422)
    assert (await client.get("/api/v1/queues")).status_code == 200


# -- strict types --------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("priority", "1"), ("run_at", 123),
                                         ("max_attempts", 1.5), ("payload", [])])
async def test_wrong_json_types_are_422(client, backend, field, value):
    response = await client.post("/api/v1/jobs", json={**SLEEP, field: value})
    assert_problem(response, 422, field=field)
    assert await job_count(backend) == 0


# -- errors the server raises itself -------------------------------------------------------


async def test_server_errors_are_problem_json(client):
    assert_problem(await client.get("/nowhere"), 404)
    assert_problem(await client.put("/api/v1/jobs"), 405)
    assert_problem(await client.post("/api/v1/jobs", content=b"{not json",
                                      headers={"content-type": "application/json"}), 400)
    too_big = b'{"type": "system.sleep", "payload": {"x": "' + b"a" * 11_000_000 + b'"}}'
    assert_problem(await client.post("/api/v1/jobs", content=too_big,
                                      headers={"content-type": "application/json"}), 413)


async def test_ready_never_shows_sql(client):
    response = await client.get("/ready")
    assert response.status_code == 200
    assert "SELECT" not in response.text


# -- nothing internal leaks ------------------------------------------------------------------


async def test_history_tracebacks_show_no_server_paths(client, start_worker):
    response = await client.post("/api/v1/jobs", json={
        **SLEEP, "payload": {"seconds": 0.05, "fail_times": 5}, "max_attempts": 1})
    job_id = response.json()["id"]
    start_worker()
    deadline = time.monotonic() + 30
    while (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] != "failed":
        assert time.monotonic() < deadline, "the job never failed"
        await asyncio.sleep(0.1)
    [attempt] = (await client.get(f"/api/v1/jobs/{job_id}/history")).json()["attempts"]
    trace = attempt["error"]["traceback"]
    assert "Traceback" in trace and 'File "' in trace  # still useful to whoever reads it
    project = str(PROJECT)
    assert project not in trace, trace
    assert sys.prefix not in trace, trace
    assert 'File "/' not in trace, trace
    assert 'File "service/' in trace or 'File "workers/' in trace, trace


# -- /api/v2 reaches only conversions ------------------------------------------------------


async def test_v2_does_not_reach_other_job_types(client, backend):
    queued = (await client.post("/api/v1/jobs", json=SLEEP)).json()
    cancelled = (await client.post("/api/v1/jobs", json=SLEEP)).json()
    assert (await client.post(f"/api/v1/jobs/{cancelled['id']}/cancel")).status_code == 200
    for job in (queued, cancelled):
        status = await client.get(f"/api/v2/status/{job['id']}")
        assert status.status_code == 404, status.text
        assert status.json() == {"error": "Job not found"}
        removed = await client.delete(f"/api/v2/jobs/{job['id']}")
        assert removed.status_code == 404, removed.text
    # both still there, untouched
    assert (await client.get(f"/api/v1/jobs/{queued['id']}")).json()["status"] == "queued"
    assert (await client.get(f"/api/v1/jobs/{cancelled['id']}")).json()["status"] == "cancelled"


# -- found by schemathesis, or by trying what the framework answers itself ----------------------


async def test_unknown_schema_paths_are_problem_json(client):
    # Litestar's OpenAPI router answered these with an HTML page
    for path in ("/schema/nothing", "/schema/x.yaml"):
        assert_problem(await client.get(path), 404)
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_options_allow_names_every_method_of_the_path(client):
    # Litestar named only the first handler's methods (GET) on paths that have several
    for path, methods in [("/api/v1/jobs/x", "DELETE, GET, OPTIONS"),
                          ("/api/v1/jobs", "GET, OPTIONS, POST"),
                          ("/api/v1/queues/q", "GET, OPTIONS, PATCH"),
                          ("/api/v1/schedules/s", "DELETE, GET, OPTIONS, PUT")]:
        response = await client.options(path)
        assert response.status_code == 204
        assert response.headers["allow"] == methods, path


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-01-01", "2026-01-01T00:00:00",
                                   "yesterday"])
async def test_date_filters_take_rfc3339_times_only(client, value):
    # a number used to be taken as seconds since 1970, a time without offset as local time
    for name in ("created_after", "created_before"):
        response = await client.get("/api/v1/jobs", params={name: value})
        assert_problem(response, 422, field=name)
    ok = await client.get("/api/v1/jobs", params={"created_after": "2026-01-01T00:00:00+02:00"})
    assert ok.status_code == 200


@pytest.mark.parametrize("content_type", ['multipart/form-data; boundary=""',
                                          "multipart/form-data; boundary=" + "b" * 300])
async def test_unusable_multipart_boundaries_are_400(client, backend, content_type):
    response = await client.post("/api/v1/conversions", content=b"--x\r\n",
                                 headers={"content-type": content_type})
    assert_problem(response, 400)
    assert await job_count(backend) == 0


async def test_methods_no_route_has_are_405_problems(client):
    for method in ("TRACE", "PUT", "PATCH"):
        response = await client.request(method, "/api/v1/formats")
        assert response.status_code == 405
        assert response.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize("field,value", [
    ("cron", "0 0 31 2 *"),  # valid, but names no date: croniter raised on every read (500)
    ("cron", "0 0 30 2 *"),
    ("timezone", "a" * 5000),  # looked up as a file: "File name too long" (500)
    ("timezone", "Europe/" + "x" * 300),
    ("timezone", "../../etc/passwd"),
])
async def test_schedules_that_could_never_run_are_422(client, field, value):
    body = {"name": "s", "job": SLEEP, "cron": "*/5 * * * *", field: value}
    response = await client.post("/api/v1/schedules", json=body)
    assert_problem(response, 422, field=field)
    assert (await client.get("/api/v1/schedules")).json()["items"] == []
    assert (await client.put("/api/v1/schedules/s", json={
        k: v for k, v in body.items() if k != "name"})).status_code == 422
