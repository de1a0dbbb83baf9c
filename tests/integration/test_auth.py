"""API keys and roles, in process (issue 13): every route's answer to no key, to each role,
and to bad keys; keys over REST; the dashboard's session and its CSRF token; what a key may
submit. Isolation between two keys over real HTTP is tests/integration/test_isolation.py;
limits across two API processes are tests/integration/test_key_limits.py."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service import auth
from service.api import access
from service.api.app import create_app
from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings

# What the issue asks of each route: the least role that may call it ("public": no key). Written
# here, not read from the code, so that the test checks the code against the rules.
EXPECTED = {
    "POST /api/v1/jobs/{job_id:str}/cancel": "submitter",
    "GET /api/v1/jobs/by-key/{key:str}": "submitter",
    "DELETE /api/v1/jobs/{job_id:str}": "operator",
    "GET /api/v1/jobs/{job_id:str}": "submitter",
    "GET /api/v1/jobs/{job_id:str}/history": "submitter",
    "GET /api/v1/jobs": "submitter",
    "POST /api/v1/jobs": "submitter",
    "POST /api/v1/jobs/{job_id:str}/retry": "operator",
    "POST /api/v1/jobs/batch": "submitter",
    "GET /api/v1/job-types": "submitter",
    "POST /api/v1/queues/{name:str}/clean": "operator",
    "GET /api/v1/queues/{name:str}": "operator",
    "PATCH /api/v1/queues/{name:str}": "operator",
    "GET /api/v1/queues": "operator",
    "POST /api/v1/queues/{name:str}/pause": "operator",
    "POST /api/v1/queues/{name:str}/resume": "operator",
    "POST /api/v1/schedules": "operator",
    "GET /api/v1/schedules": "operator",
    "PUT /api/v1/schedules/{name:str}": "operator",
    "DELETE /api/v1/schedules/{name:str}": "operator",
    "GET /api/v1/schedules/{name:str}": "operator",
    "GET /api/v1/workers": "operator",
    "POST /api/v1/maintenance/recover-stalled": "admin",
    "GET /health": "public",
    "GET /ready": "public",
    "POST /api/v1/conversions": "submitter",
    "GET /api/v1/formats": "submitter",
    "GET /api/v1/jobs/{job_id:str}/output": "submitter",
    "GET /api/v1/jobs/{job_id:str}/stream": "submitter",
    "GET /api/v1/events": "submitter",
    "GET /api/v1/jobs/{job_id:str}/deliveries": "submitter",
    "GET /metrics": "operator",
    "POST /api/v2/convert": "submitter",
    "GET /api/v2/status/{job_id:str}": "submitter",
    "GET /api/v2/queue/stats": "submitter",
    "DELETE /api/v2/jobs/{job_id:str}": "submitter",
    "GET /dashboard": "public",
    "GET /dashboard/assets/{file_path:path}": "public",
    "POST /api/v1/keys": "admin",
    "GET /api/v1/keys": "admin",
    "DELETE /api/v1/keys/{ref:str}": "admin",
    "DELETE /api/v1/session": "submitter",
    "GET /api/v1/session": "submitter",
    "POST /api/v1/session": "public",
    "GET /schema": "public",
    "GET /schema/swagger": "public",
    "GET /schema/{path:str}": "public",
    "GET /schema/openapi.json": "public",
    "GET /schema/oauth2-redirect.html": "public",
}

LEVELS = ("public", "submitter", "operator", "admin")
PROJECT = str(Path(__file__).resolve().parents[2])


def routes(app) -> dict[str, str | None]:
    """Every route and method the app answers (Litestar's automatic OPTIONS and HEAD aside),
    with the rule the guard applies."""
    found = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods - {"OPTIONS", "HEAD"}:
                found[f"{method} {route.path}"] = access.rule_of(handler)
    return found


def concrete(template: str) -> str:
    """A path for a route template: ids that name nothing, harmless names."""
    values = {"job_id": str(uuid.uuid4()), "key": "no-such-key", "name": "matrix-queue",
              "ref": str(uuid.uuid4()), "file_path": "app.css", "path": "nothing"}
    return re.sub(r"\{(\w+):\w+\}", lambda m: values[m[1]], template)


@pytest.fixture
async def keyed(database_url: str, backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    """The API with authentication on, called without a key."""
    settings = Settings(database_url=database_url, allowed_hosts=("jobq.test",), auth="on")
    transport = httpx.ASGITransport(app=create_app(settings, backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://jobq.test") as client:
        yield client


async def new_key(backend: Backend, role: str = "submitter", **kwargs) -> str:
    async with backend.connection() as conn:
        _, secret = await auth.create_key(conn, f"{role}-{uuid.uuid4().hex[:6]}", role, **kwargs)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def call(client: httpx.AsyncClient, route: str, headers: dict[str, str]) -> httpx.Response:
    method, template = route.split(" ", 1)
    path = concrete(template)
    if route == "GET /api/v1/events":  # an allowed caller gets a 422 instead of an endless stream
        return await client.get(path, params={"queue": "not a queue!"}, headers=headers)
    if method in ("POST", "PUT", "PATCH"):
        if template in ("/api/v1/conversions", "/api/v2/convert"):
            return await client.post(path, files={"other": ("x.txt", b"x")}, headers=headers)
        if template.endswith(("/cancel", "/retry", "/pause", "/resume", "/recover-stalled")):
            return await client.request(method, path, headers=headers)
        return await client.request(method, path, json={"not": "valid"}, headers=headers)
    return await client.request(method, path, headers=headers)


def test_every_route_declares_the_rule_the_issue_gives_it(database_url):
    # A route added without a rule (None) or with another rule than the issue's fails here.
    found = routes(create_app(Settings(database_url=database_url), object()))
    assert found == EXPECTED


async def test_each_role_is_allowed_or_refused_on_every_route(keyed, backend):
    secrets = {role: await new_key(backend, role) for role in auth.ROLES}
    for route, least in EXPECTED.items():
        answers = {"public": await call(keyed, route, {})}
        for role in auth.ROLES:
            answers[role] = await call(keyed, route, bearer(secrets[role]))
        for level, response in answers.items():
            allowed = LEVELS.index(level) >= LEVELS.index(least)
            if allowed:
                assert response.status_code not in (401, 403), (route, level, response.text)
                assert response.status_code < 500, (route, level, response.text)
                continue
            expected = 401 if level == "public" else 403
            assert response.status_code == expected, (route, level, response.text)
            if route.split(" ", 1)[1].startswith("/api/v2"):
                assert "error" in response.json()  # /api/v2 keeps that service's shape
                continue
            assert response.headers["content-type"] == "application/problem+json", route
            body = response.json()
            if expected == 401:
                assert "Authorization: Bearer" in body["detail"]
                assert response.headers["www-authenticate"].startswith("Bearer")
            else:
                assert f"needs the {least} role" in body["detail"] and f"is a {level}" in \
                    body["detail"], body


async def test_unknown_malformed_and_revoked_keys_are_401(keyed, backend):
    for header in ({"Authorization": "Bearer jobq_not-a-key"}, {"Authorization": "Basic abc"},
                   {"Authorization": "Bearer "}):
        response = await keyed.get("/api/v1/jobs", headers=header)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"] == "application/problem+json"
    secret = await new_key(backend, "operator")
    assert (await keyed.get("/api/v1/jobs", headers=bearer(secret))).status_code == 200
    async with backend.connection() as conn:
        await auth.revoke_key(conn, secret[:auth.SHOWN_PREFIX])
    response = await keyed.get("/api/v1/jobs", headers=bearer(secret))
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    # /health needs nothing, whatever is sent.
    assert (await keyed.get("/health", headers=bearer(secret))).status_code == 200


async def test_keys_over_rest_are_shown_once_and_stored_as_hashes(keyed, backend):
    admin = bearer(await new_key(backend, "admin"))
    response = await keyed.post("/api/v1/keys", headers=admin, json={
        "name": "ci", "role": "submitter", "queues": ["default"], "types": ["system.noop"],
        "limits": {"submissions_per_second": 2, "max_queued": 10}})
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["key"]
    assert secret.startswith("jobq_") and len(secret) == 48
    assert created["prefix"] == secret[:12]
    assert created["limits"]["submissions_per_second"] == 2
    listed = (await keyed.get("/api/v1/keys", headers=admin)).json()["items"]
    assert [k["name"] for k in listed if k["id"] == created["id"]] == ["ci"]
    assert all("key" not in k for k in listed)
    async with backend.connection() as conn:
        stored = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1",
                                     uuid.UUID(created["id"]))
        text = " ".join(str(v) for v in stored.values())
    assert secret not in text and secret[12:] not in text
    assert stored["key_hash"] == auth.digest(secret)
    # The new key works, as a submitter.
    me = (await keyed.get("/api/v1/session", headers=bearer(secret))).json()
    assert (me["name"], me["role"], me["queues"]) == ("ci", "submitter", ["default"])
    # Bad requests name the field; nothing is created.
    bad = await keyed.post("/api/v1/keys", headers=admin,
                           json={"name": "", "role": "root", "limits": {"max_queued": 0}})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"name", "role", "limits.max_queued"}
    bad = await keyed.post("/api/v1/keys", headers=admin, json={"name": "x", "rolee": "admin"})
    assert bad.status_code == 422
    # Revoked by id: it stops working at once; revoking again changes nothing.
    revoked = await keyed.delete(f"/api/v1/keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert (await keyed.get("/api/v1/session", headers=bearer(secret))).status_code == 401
    again = await keyed.delete(f"/api/v1/keys/{created['id']}", headers=admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert (await keyed.delete(f"/api/v1/keys/{uuid.uuid4()}", headers=admin)).status_code == 404
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE name = ''") == 0


async def test_the_dashboard_session_is_a_cookie_with_a_csrf_token(keyed, backend):
    secret = await new_key(backend, "operator")
    assert (await keyed.post("/api/v1/session", json={"key": "jobq_wrong"})).status_code == 401
    login = await keyed.post("/api/v1/session", json={"key": secret})
    assert login.status_code == 200, login.text
    csrf = login.json()["csrf_token"]
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    token = keyed.cookies[auth.SESSION_COOKIE]
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM api_sessions")
    assert row["token_hash"] == auth.digest(token)  # the token itself is not stored
    # Reads need only the cookie; the session says who is logged in and its CSRF token.
    me = await keyed.get("/api/v1/session")
    assert me.status_code == 200 and me.json()["role"] == "operator"
    assert me.json()["csrf_token"] == csrf
    assert (await keyed.get("/api/v1/queues")).status_code == 200
    # A change without the CSRF token, or with a wrong one, is refused and changes nothing.
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        refused = await keyed.post("/api/v1/queues/default/pause", headers=headers)
        assert refused.status_code == 403, refused.text
        assert "X-CSRF-Token" in refused.json()["detail"]
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queues WHERE paused") == 0
    done = await keyed.post("/api/v1/queues/default/pause", headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.json()["paused"] is True
    # Logging out ends the session for good.
    out = await keyed.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    keyed.cookies.set(auth.SESSION_COOKIE, token)
    assert (await keyed.get("/api/v1/session")).status_code == 401
    # Revoking a key ends its sessions too.
    keyed.cookies.clear()
    await keyed.post("/api/v1/session", json={"key": secret})
    assert (await keyed.get("/api/v1/session")).status_code == 200
    async with backend.connection() as conn:
        await auth.revoke_key(conn, secret[:auth.SHOWN_PREFIX])
    assert (await keyed.get("/api/v1/session")).status_code == 401


async def test_a_key_limited_to_queues_and_types_is_told_which(keyed, backend):
    secret = await new_key(backend, queues=["default"], job_types=["system.noop"])
    ok = await keyed.post("/api/v1/jobs", headers=bearer(secret), json={"type": "system.noop"})
    assert ok.status_code == 201, ok.text
    wrong_queue = await keyed.post("/api/v1/jobs", headers=bearer(secret),
                                   json={"type": "system.noop", "queue": "other"})
    assert wrong_queue.status_code == 403
    assert wrong_queue.headers["content-type"] == "application/problem+json"
    assert "queue 'other'" in wrong_queue.json()["detail"]
    assert "default" in wrong_queue.json()["detail"]
    wrong_type = await keyed.post("/api/v1/jobs", headers=bearer(secret),
                                  json={"type": "system.sleep", "payload": {"seconds": 0}})
    assert wrong_type.status_code == 403
    assert "'system.sleep'" in wrong_type.json()["detail"]
    batch = await keyed.post("/api/v1/jobs/batch", headers=bearer(secret), json={"jobs": [
        {"type": "system.noop"}, {"type": "system.noop", "queue": "other"}]})
    assert batch.status_code == 403 and "jobs[1].queue" in batch.json()["detail"]
    conversion = await keyed.post("/api/v1/conversions", headers=bearer(secret),
                                  files={"file": ("cube.obj", b"v 0 0 0\n")},
                                  data={"format": "glb"})
    assert conversion.status_code == 403 and "'conversions'" in conversion.json()["detail"]
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1


async def test_the_longest_timeout_a_key_may_ask_for(keyed, backend):
    secret = await new_key(backend, limits=auth.KeyLimits(max_timeout_seconds=30))
    over = await keyed.post("/api/v1/jobs", headers=bearer(secret), json={
        "type": "system.sleep", "payload": {"seconds": 0}, "timeout_seconds": 31})
    assert over.status_code == 422, over.text
    assert over.json()["errors"] == [{"field": "timeout_seconds",
                                      "message": "at most 30 for this key"}]
    # Without a timeout, the job gets the key's longest when the type's default is longer.
    job = (await keyed.post("/api/v1/jobs", headers=bearer(secret),
                            json={"type": "system.sleep", "payload": {"seconds": 0}})).json()
    assert job["timeout_seconds"] == 30
    at = (await keyed.post("/api/v1/jobs", headers=bearer(secret), json={
        "type": "system.sleep", "payload": {"seconds": 0}, "timeout_seconds": 30})).json()
    assert at["timeout_seconds"] == 30
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 2


async def test_tracebacks_and_workers_are_for_operators(keyed, backend):
    submitter = await new_key(backend)
    operator = await new_key(backend, "operator")
    job = (await keyed.post("/api/v1/jobs", headers=bearer(submitter),
                            json={"type": "system.noop"})).json()
    # The attempt as a worker records it: a traceback with server paths, a worker name that
    # carries its host and process id.
    project = PROJECT
    error = {"type": "RuntimeError", "message": f"cannot open {project}/workers/secret.txt",
             "retryable": False,
             "traceback": f'Traceback:\n  File "{project}/workers/outcomes.py", line 1\n'}
    async with backend.connection() as conn:
        await conn.execute(
            "INSERT INTO job_attempts (job_id, number, worker_name, outcome, error, finished_at) "
            "VALUES ($1, 1, 'host-a-4242', 'failed', $2::jsonb, now())",
            uuid.UUID(job["id"]), json.dumps(error))
        await conn.execute(
            "INSERT INTO job_events (job_id, event, attempt, worker_name, error) "
            "VALUES ($1, 'failed', 1, 'host-a-4242', $2::jsonb)",
            uuid.UUID(job["id"]), json.dumps(error))
    seen = (await keyed.get(f"/api/v1/jobs/{job['id']}/history",
                            headers=bearer(submitter))).json()
    text = json.dumps(seen)
    assert "Traceback" not in text and project not in text and "host-a-4242" not in text
    assert seen["attempts"][0]["error"]["message"] == "cannot open workers/secret.txt"
    assert seen["attempts"][0]["worker"] is None and seen["items"][-1]["worker"] is None
    full = (await keyed.get(f"/api/v1/jobs/{job['id']}/history",
                            headers=bearer(operator))).json()
    assert full["attempts"][0]["worker"] == "host-a-4242"
    # Operators get the traceback, its frames relative as before (the message as written).
    assert 'File "workers/outcomes.py"' in full["attempts"][0]["error"]["traceback"]
    assert project not in full["attempts"][0]["error"]["traceback"]


async def test_locks_and_queueing_locks_are_each_keys_own(keyed, backend):
    a, b = bearer(await new_key(backend)), bearer(await new_key(backend))
    job = {"type": "system.noop", "delay_seconds": 3600, "queueing_lock": "nightly",
           "lock": "serial"}
    assert (await keyed.post("/api/v1/jobs", headers=a, json=job)).status_code == 201
    # Another key's job under the same names neither collides nor learns of A's.
    assert (await keyed.post("/api/v1/jobs", headers=b, json=job)).status_code == 201
    again = await keyed.post("/api/v1/jobs", headers=a, json=job)
    assert again.status_code == 409 and "queueing_lock" in again.json()["detail"]
    async with backend.connection() as conn:
        locks = await conn.fetch("SELECT lock, queueing_lock FROM procrastinate_jobs")
    assert len({r["lock"] for r in locks}) == 2 and len({r["queueing_lock"] for r in locks}) == 2


async def test_a_queue_default_timeout_never_lifts_a_keys_longest(keyed, backend):
    operator = bearer(await new_key(backend, "operator"))
    changed = await keyed.patch("/api/v1/queues/long", headers=operator,
                                json={"timeout_seconds": 7200})
    assert changed.status_code == 200, changed.text
    # Longer than system.noop's own default, shorter than the queue's.
    default = jobtypes.get("system.noop").timeout.total_seconds()
    secret = bearer(await new_key(backend, limits=auth.KeyLimits(
        max_timeout_seconds=default + 60)))
    job = await keyed.post("/api/v1/jobs", headers=secret,
                           json={"type": "system.noop", "queue": "long"})
    assert job.status_code == 201, job.text
    assert job.json()["timeout_seconds"] == default
    # Without a key's longest, the queue's default applies as before.
    plain = await keyed.post("/api/v1/jobs", headers=operator,
                             json={"type": "system.noop", "queue": "long"})
    assert plain.json()["timeout_seconds"] == 7200
