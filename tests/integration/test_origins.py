"""Browser-origin protection (issue 13): a page on another site cannot submit jobs, pause
queues or upload files; a `Host` the API does not answer to (DNS rebinding) is refused; CORS
is closed unless configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.api.app import create_app
from service.backend import Backend
from service.settings import Settings, SettingsError, load_settings

PROBLEM = "application/problem+json"
SLEEP = b'{"type": "system.sleep", "payload": {"seconds": 1}}'
OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


async def job_count(backend: Backend) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval("SELECT count(*) FROM jobs")


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


@pytest.fixture
async def api(database_url: str, backend: Backend):
    """A client factory: the API with given settings, called at a given base URL."""
    clients: list[httpx.AsyncClient] = []

    def make(base_url: str = "http://127.0.0.1:8000", **settings) -> httpx.AsyncClient:
        # Authentication off: these tests are about origins (any address: some listen on one).
        settings.setdefault("auth", "off-any-address")
        app = create_app(Settings(database_url=database_url, **settings), backend)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def local(api) -> AsyncIterator[httpx.AsyncClient]:
    """The default settings, called as a local client does."""
    yield api()


# -- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None,
    "application/jsonx",
])
async def test_a_job_body_must_be_json(local, backend, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = await local.post("/api/v1/jobs", content=SLEEP, headers=headers)
    body = assert_problem(response, 415)
    assert "application/json" in body["detail"]
    assert await job_count(backend) == 0


async def test_json_with_a_charset_is_accepted(local):
    response = await local.post("/api/v1/jobs", content=SLEEP,
                                headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("path", ["/api/v1/queues/default/pause", "/api/v1/jobs/batch",
                                  "/api/v1/maintenance/recover-stalled"])
async def test_a_form_post_cannot_reach_any_route(local, path):
    response = await local.post(path, content=b"a=b",
                                headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415)


async def test_a_post_without_a_body_needs_no_content_type(local):
    response = await local.post("/api/v1/maintenance/recover-stalled")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", ["/api/v1/conversions", "/api/v2/convert"])
async def test_uploads_must_be_multipart(local, backend, route):
    response = await local.post(route, content=OBJ, headers={"content-type": "text/plain"})
    assert_problem(response, 415)
    response = await local.post(route, content=b'{"format": "glb"}',
                                headers={"content-type": "application/json"})
    assert_problem(response, 415)
    ok = await local.post(route, files=[("file", ("a.obj", OBJ, "text/plain"))],
                          data={"format": "glb"})
    assert ok.status_code in (200, 201), ok.text
    assert await job_count(backend) == 1


# -- Host --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8000", "http://localhost:8000",
                                      "http://[::1]:8000", "http://LOCALHOST"])
async def test_local_names_are_allowed_by_default(api, base_url):
    response = await api(base_url).get("/api/v1/queues")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.evil",
                                  "10.0.0.5:8000"])
async def test_other_hosts_are_refused(local, backend, host):
    response = await local.get("/api/v1/queues", headers={"host": host})
    body = assert_problem(response, 400)
    assert "JOBQ_ALLOWED_HOSTS" in body["detail"]
    response = await local.post("/api/v1/jobs", content=SLEEP,
                                headers={"host": host, "content-type": "application/json"})
    assert_problem(response, 400)
    assert await job_count(backend) == 0


async def test_the_bound_address_is_allowed(api):
    client = api("http://10.0.0.5:8000", host="10.0.0.5")
    assert (await client.get("/api/v1/queues")).status_code == 200


async def test_configured_hosts_and_subdomains(api):
    client = api("http://jobq.example.com", allowed_hosts=("jobq.example.com", "*.internal"))
    assert (await client.get("/api/v1/queues")).status_code == 200
    assert (await client.get("/api/v1/queues",
                             headers={"host": "a.b.internal:8000"})).status_code == 200
    assert (await client.get("/api/v1/queues", headers={"host": "localhost"})).status_code == 400
    assert (await client.get("/api/v1/queues", headers={"host": "internal"})).status_code == 400


async def test_star_allows_any_host(api):
    client = api("http://anything.example", allowed_hosts=("*",))
    assert (await client.get("/api/v1/queues")).status_code == 200


async def test_probes_answer_any_host(local):
    assert (await local.get("/health", headers={"host": "10.1.2.3:8000"})).status_code == 200


# -- Origin ------------------------------------------------------------------------------------


async def test_a_page_of_another_site_cannot_submit(local, backend):
    for content_type in ("application/json", "text/plain"):
        response = await local.post("/api/v1/jobs", content=SLEEP, headers={
            "origin": "https://evil.example", "content-type": content_type})
        assert_problem(response, 403)
    response = await local.post("/api/v1/queues/default/pause",
                                headers={"origin": "https://evil.example"})
    assert_problem(response, 403)
    response = await local.post("/api/v1/jobs", content=SLEEP, headers={
        "origin": "null", "content-type": "application/json"})
    assert_problem(response, 403)
    assert await job_count(backend) == 0


async def test_the_dashboard_own_origin_is_allowed(local):
    response = await local.post("/api/v1/jobs", content=SLEEP, headers={
        "origin": "http://127.0.0.1:8000", "content-type": "application/json"})
    assert response.status_code == 201, response.text


# -- CORS --------------------------------------------------------------------------------------


async def test_cors_is_closed_by_default(local):
    preflight = await local.options("/api/v1/jobs", headers={
        "origin": "https://app.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    response = await local.get("/api/v1/queues", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_configured_cors_origin_may_call(api, backend):
    client = api(cors_origins=("https://app.example",))
    preflight = await client.options("/api/v1/jobs", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code in (200, 204), preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = await client.post("/api/v1/jobs", content=SLEEP, headers={
        "origin": "https://app.example", "content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    other = await client.post("/api/v1/jobs", content=SLEEP, headers={
        "origin": "https://evil.example", "content-type": "application/json"})
    assert_problem(other, 403)
    assert await job_count(backend) == 1


# -- settings ----------------------------------------------------------------------------------


def test_settings_parse_hosts_and_origins():
    s = load_settings({"JOBQ_ALLOWED_HOSTS": "Jobq.Example.com, *.internal,[::1]",
                       "JOBQ_CORS_ORIGINS": "https://app.example"})
    assert s.allowed_hosts == ("jobq.example.com", "*.internal", "[::1]")
    assert s.cors_origins == ("https://app.example",)
    for bad in ("jobq.example.com:8000", "a.*.example"):
        with pytest.raises(SettingsError, match="JOBQ_ALLOWED_HOSTS"):
            load_settings({"JOBQ_ALLOWED_HOSTS": bad})
