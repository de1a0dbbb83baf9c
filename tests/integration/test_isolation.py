"""Two submitter keys against a real `jobq serve` and a real worker (issue 13): every route is
tried by the other key on the first key's jobs. A submitter never reads, downloads, cancels or
even learns of another key's job: 404, as for a job that does not exist; lists, streams and
counts hold its own jobs only. The routes come from the app's route table: a new route without
a case here fails `test_every_route_has_an_isolation_case`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from service import auth
from service.api.app import create_app
from service.backend import Backend
from service.settings import Settings
from tests.integration.test_auth import routes
from tests.support import serve_and_work

CORPUS = Path(__file__).resolve().parents[1] / "corpus"  # see tests/corpus/NOTICE
CUBE = (CORPUS / "cube.OBJ").read_bytes()


class World:
    """The API, a client per key, and the jobs of key A that B tries to reach."""

    def __init__(self, url: str, secrets: dict[str, str]) -> None:
        self.url = url
        self.clients = {name: httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {secret}"})
            for name, secret in secrets.items()}
        self.anonymous = httpx.AsyncClient(base_url=url, timeout=30)
        self.jobs: dict[str, dict] = {}

    @property
    def a(self) -> httpx.AsyncClient:
        return self.clients["a"]

    @property
    def b(self) -> httpx.AsyncClient:
        return self.clients["b"]

    @property
    def operator(self) -> httpx.AsyncClient:
        return self.clients["operator"]

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.clients["admin"]

    async def close(self) -> None:
        for client in (*self.clients.values(), self.anonymous):
            await client.aclose()


Case = Callable[[World], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(*names: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        for name in names:
            assert name not in CASES, name
            CASES[name] = function
        return function
    return register


def not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.request.url, response.text)


def refused(response: httpx.Response, status: int = 403) -> None:
    assert response.status_code == status, (response.request.url, response.text)


async def wait_finished(client: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)


# -- one job of A's, asked for by B -----------------------------------------------------------


@case("GET /api/v1/jobs/{job_id:str}")
async def _get(w: World) -> None:
    done = w.jobs["done"]["id"]
    not_found(await w.b.get(f"/api/v1/jobs/{done}"))
    assert (await w.a.get(f"/api/v1/jobs/{done}")).json()["id"] == done
    assert (await w.operator.get(f"/api/v1/jobs/{done}")).status_code == 200
    # B's 404 reads exactly as the one for a job that does not exist, but for the id.
    other = uuid.uuid4()
    missing = (await w.b.get(f"/api/v1/jobs/{other}")).json()
    theirs = (await w.b.get(f"/api/v1/jobs/{done}")).json()
    assert theirs["detail"].replace(done, "ID") == missing["detail"].replace(str(other), "ID")


@case("GET /api/v1/jobs/{job_id:str}/history")
async def _history(w: World) -> None:
    failed = w.jobs["failed"]["id"]
    not_found(await w.b.get(f"/api/v1/jobs/{failed}/history"))
    own = (await w.a.get(f"/api/v1/jobs/{failed}/history")).json()
    full = (await w.operator.get(f"/api/v1/jobs/{failed}/history")).json()
    # A sees its job failed, not the worker's traceback nor which host ran it.
    assert own["attempts"] and all(a["worker"] is None and "traceback" not in (a["error"] or {})
                                   for a in own["attempts"])
    assert "Traceback" not in json.dumps(own) and "iso-worker" not in json.dumps(own)
    assert full["attempts"][0]["worker"] == "iso-worker"
    assert "Traceback" in full["attempts"][0]["error"]["traceback"]


@case("POST /api/v1/jobs/{job_id:str}/cancel")
async def _cancel(w: World) -> None:
    waiting = w.jobs["waiting"]["id"]
    not_found(await w.b.post(f"/api/v1/jobs/{waiting}/cancel"))
    assert (await w.a.get(f"/api/v1/jobs/{waiting}")).json()["status"] == "scheduled"
    cancelled = await w.a.post(f"/api/v1/jobs/{waiting}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


@case("POST /api/v1/jobs/{job_id:str}/retry")
async def _retry(w: World) -> None:
    failed = w.jobs["failed"]["id"]
    # Retrying is an operator's: any submitter is refused alike, whoever's the job is.
    refused(await w.b.post(f"/api/v1/jobs/{failed}/retry"))
    refused(await w.a.post(f"/api/v1/jobs/{failed}/retry"))
    refused(await w.b.post(f"/api/v1/jobs/{uuid.uuid4()}/retry"))
    assert (await w.a.get(f"/api/v1/jobs/{failed}")).json()["status"] == "failed"


@case("DELETE /api/v1/jobs/{job_id:str}")
async def _delete(w: World) -> None:
    done = w.jobs["done"]["id"]
    refused(await w.b.delete(f"/api/v1/jobs/{done}"))
    refused(await w.a.delete(f"/api/v1/jobs/{done}"))
    assert (await w.a.get(f"/api/v1/jobs/{done}")).status_code == 200


@case("GET /api/v1/jobs/{job_id:str}/stream")
async def _stream(w: World) -> None:
    done = w.jobs["done"]["id"]
    not_found(await w.b.get(f"/api/v1/jobs/{done}/stream"))
    not_found(await w.b.get(f"/api/v1/jobs/{done}/stream", headers={"Last-Event-ID": "1-0"}))
    own = await w.a.get(f"/api/v1/jobs/{done}/stream")  # finished: its state, then the end
    assert own.status_code == 200 and f'"id":"{done}"' in own.text


@case("GET /api/v1/jobs/{job_id:str}/output")
async def _output(w: World) -> None:
    conversion = w.jobs["conversion"]["id"]
    not_found(await w.b.get(f"/api/v1/jobs/{conversion}/output"))
    own = await w.a.get(f"/api/v1/jobs/{conversion}/output")
    assert own.status_code == 200 and own.content[:4] == b"glTF"


@case("GET /api/v1/jobs/{job_id:str}/deliveries")
async def _deliveries(w: World) -> None:
    done = w.jobs["done"]["id"]
    not_found(await w.b.get(f"/api/v1/jobs/{done}/deliveries"))
    assert (await w.a.get(f"/api/v1/jobs/{done}/deliveries")).status_code == 200


@case("GET /api/v1/jobs/by-key/{key:str}")
async def _by_key(w: World) -> None:
    # Both keys used the job key "common": each finds its own job by it.
    mine = (await w.a.get("/api/v1/jobs/by-key/common")).json()["id"]
    theirs = (await w.b.get("/api/v1/jobs/by-key/common")).json()["id"]
    assert mine == w.jobs["done"]["id"] and theirs == w.jobs["b_shared"]["id"]
    not_found(await w.b.get("/api/v1/jobs/by-key/only-a"))
    assert (await w.a.get("/api/v1/jobs/by-key/only-a")).status_code == 200


@case("GET /api/v1/jobs")
async def _list(w: World) -> None:
    a_ids = {j["id"] for j in w.jobs.values() if j.get("owner") == "a"}

    async def ids(client: httpx.AsyncClient, **params) -> set[str]:
        page = await client.get("/api/v1/jobs", params={"limit": 500, **params})
        return {j["id"] for j in page.json()["items"]}

    b_sees = await ids(w.b)
    assert b_sees and not b_sees & a_ids
    assert a_ids <= await ids(w.a)
    assert not (await ids(w.a)) & {w.jobs["b_shared"]["id"]}
    assert await ids(w.b, key="only-a") == set()
    assert await ids(w.b, status="failed") == set()
    assert a_ids | {w.jobs["b_shared"]["id"]} <= await ids(w.operator)


@case("POST /api/v1/jobs", "POST /api/v1/jobs/batch")
async def _submit(w: World) -> None:
    # Same job key and Idempotency-Key as A's jobs: B gets a job of its own, learns nothing.
    b_shared = w.jobs["b_shared"]
    assert b_shared["id"] != w.jobs["done"]["id"] and b_shared["status"] != "succeeded"
    # A replay of B's request with that Idempotency-Key is B's job; A's body under the same
    # Idempotency-Key is a conflict with B's own request, never A's job.
    again = await w.b.post("/api/v1/jobs", headers={"Idempotency-Key": "idem-a"}, json={
        "type": "system.sleep", "key": "common", "payload": {"seconds": 0}})
    assert again.status_code == 200 and again.json()["id"] == b_shared["id"], again.text
    conflict = await w.b.post("/api/v1/jobs", headers={"Idempotency-Key": "idem-a"},
                              json={"type": "system.noop", "key": "common"})
    assert conflict.status_code == 409 and w.jobs["done"]["id"] not in conflict.text
    batch = await w.b.post("/api/v1/jobs/batch", json={"jobs": [
        {"type": "system.noop", "key": "only-a"}]})
    assert batch.status_code == 201, batch.text
    [new] = batch.json()["ids"]
    assert new != w.jobs["only_a"]["id"]


@case("POST /api/v1/conversions", "POST /api/v2/convert")
async def _uploads(w: World) -> None:
    v1 = await w.b.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                        data={"format": "glb", "key": "conv-a"})
    assert v1.status_code == 201, v1.text
    assert v1.json()["id"] != w.jobs["conversion"]["id"]
    v2 = await w.b.post("/api/v2/convert", files={"file": ("cube.obj", CUBE)},
                        data={"jobId": "v2-a"})
    assert v2.status_code == 200, v2.text
    assert v2.json()["jobId"] != w.jobs["v2"]["id"]


@case("GET /api/v2/status/{job_id:str}")
async def _v2_status(w: World) -> None:
    v2 = w.jobs["v2"]["id"]
    response = await w.b.get(f"/api/v2/status/{v2}")
    assert response.status_code == 404 and response.json() == {"error": "Job not found"}
    assert (await w.a.get(f"/api/v2/status/{v2}")).json()["status"] == "completed"


@case("DELETE /api/v2/jobs/{job_id:str}")
async def _v2_delete(w: World) -> None:
    v2 = w.jobs["v2"]["id"]
    assert (await w.b.delete(f"/api/v2/jobs/{v2}")).status_code == 404
    # A may cancel its own waiting job there, but removing a finished one is an operator's.
    assert (await w.a.delete(f"/api/v2/jobs/{v2}")).status_code == 403
    assert (await w.a.get(f"/api/v2/status/{v2}")).status_code == 200


@case("GET /api/v2/queue/stats")
async def _v2_stats(w: World) -> None:
    async def conversions(client: httpx.AsyncClient) -> int:
        page = await client.get("/api/v1/jobs", params={"type": "mesh.convert", "limit": 500})
        return len(page.json()["items"])

    a_counts = (await w.a.get("/api/v2/queue/stats")).json()
    b_counts = (await w.b.get("/api/v2/queue/stats")).json()
    assert a_counts["completed"] == 2  # its two conversions
    # B's own conversions only (its uploads' case made some), none of A's.
    assert sum(b_counts.values()) == await conversions(w.b) < (
        await conversions(w.b) + await conversions(w.a))
    everyone = (await w.operator.get("/api/v2/queue/stats")).json()
    assert sum(everyone.values()) >= sum(a_counts.values()) + sum(b_counts.values())


@case("GET /api/v1/events")
async def _events(w: World) -> None:
    """B's stream of every job carries B's jobs only: a job of A's submitted while it is open
    never appears; B's own job, submitted after it, does."""
    seen: list[str] = []
    b_job: dict = {}

    async def follow() -> None:
        async with w.b.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:])["job_id"])
                    if b_job and b_job["id"] in seen:
                        return

    opened = asyncio.Event()
    task = asyncio.create_task(follow())
    await asyncio.wait_for(opened.wait(), 10)
    a_job = (await w.a.post("/api/v1/jobs", json={"type": "system.noop"})).json()
    await wait_finished(w.a, a_job["id"])
    b_job.update((await w.b.post("/api/v1/jobs", json={"type": "system.noop"})).json())
    await asyncio.wait_for(task, 30)
    assert b_job["id"] in seen and a_job["id"] not in seen, seen
    # Resumed from the start of history: still none of A's.
    seen.clear()
    async with w.b.stream("GET", "/api/v1/events", headers={"Last-Event-ID": "0-0"}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]).get("job_id", ""))
            if b_job["id"] in seen:
                break
    assert not {j["id"] for j in w.jobs.values() if j.get("owner") == "a"} & set(seen)


@case("GET /api/v1/job-types", "GET /api/v1/formats", "GET /api/v1/session")
async def _own(w: World) -> None:
    for client in (w.a, w.b):
        assert (await client.get("/api/v1/job-types")).status_code == 200
        assert (await client.get("/api/v1/formats")).status_code == 200
    assert (await w.b.get("/api/v1/session")).json()["name"] == "b"


@case("DELETE /api/v1/session", "POST /api/v1/session")
async def _session(w: World) -> None:
    async with httpx.AsyncClient(base_url=w.url, timeout=30) as browser:
        login = await browser.post("/api/v1/session", json={"key": w.secrets["b"]})
        assert login.status_code == 200
        # The session is B's: the same isolation holds for the dashboard.
        not_found(await browser.get(f"/api/v1/jobs/{w.jobs['done']['id']}"))
        out = await browser.delete("/api/v1/session",
                                   headers={"X-CSRF-Token": login.json()["csrf_token"]})
        assert out.status_code == 200


OPERATOR_ROUTES = (
    "POST /api/v1/queues/{name:str}/clean", "GET /api/v1/queues/{name:str}",
    "PATCH /api/v1/queues/{name:str}", "GET /api/v1/queues",
    "POST /api/v1/queues/{name:str}/pause", "POST /api/v1/queues/{name:str}/resume",
    "POST /api/v1/schedules", "GET /api/v1/schedules", "PUT /api/v1/schedules/{name:str}",
    "DELETE /api/v1/schedules/{name:str}", "GET /api/v1/schedules/{name:str}",
    "GET /api/v1/workers", "GET /metrics")


@case(*OPERATOR_ROUTES)
async def _operators_only(w: World) -> None:
    """Queues (with counts of everyone's jobs), schedules, workers (hosts, process ids) and
    metrics are an operator's: a submitter is refused, without a word about other jobs."""
    for route in OPERATOR_ROUTES:
        method, template = route.split(" ", 1)
        path = template.replace("{name:str}", "default")
        body = {"json": {}} if method in ("PATCH", "PUT", "POST") and "schedules" in path else {}
        response = await w.b.request(method, path, **body)
        refused(response)
        assert "needs the operator role" in response.json()["detail"]
    workers = (await w.operator.get("/api/v1/workers")).json()["items"]
    assert workers and workers[0]["pid"] and workers[0]["host"]
    assert (await w.operator.get("/metrics")).status_code == 200


ADMIN_ROUTES = ("POST /api/v1/keys", "GET /api/v1/keys", "DELETE /api/v1/keys/{ref:str}",
                "POST /api/v1/maintenance/recover-stalled")


@case(*ADMIN_ROUTES)
async def _admins_only(w: World) -> None:
    for client in (w.b, w.operator):
        refused(await client.get("/api/v1/keys"))
        refused(await client.post("/api/v1/keys", json={"name": "x"}))
        refused(await client.delete(f"/api/v1/keys/{w.secrets['a'][:12]}"))
        refused(await client.post("/api/v1/maintenance/recover-stalled"))
    listed = (await w.admin.get("/api/v1/keys")).json()["items"]
    assert {k["name"] for k in listed} == {"a", "b", "operator", "admin"}
    assert (await w.admin.post("/api/v1/maintenance/recover-stalled")).status_code == 200


PUBLIC_ROUTES = ("GET /health", "GET /ready", "GET /dashboard",
                 "GET /dashboard/assets/{file_path:path}", "GET /schema", "GET /schema/swagger",
                 "GET /schema/{path:str}", "GET /schema/openapi.json",
                 "GET /schema/oauth2-redirect.html")


@case(*PUBLIC_ROUTES)
async def _public(w: World) -> None:
    """Open routes hold no job: the probes, the dashboard's page and files (its data come from
    the API, with a key), and the API's own description."""
    for path in ("/health", "/ready", "/dashboard", "/dashboard/assets/app.css",
                 "/schema/openapi.json"):
        response = await w.anonymous.get(path)
        assert response.status_code == 200, (path, response.text)
        for job in w.jobs.values():
            assert job["id"] not in response.text


def test_every_route_has_an_isolation_case(database_url):
    found = set(routes(create_app(Settings(database_url=database_url), object())))
    assert found - set(CASES) == set(), "routes without an isolation case"
    assert set(CASES) - found == set(), "cases for routes that do not exist"


@pytest.fixture
async def world(database_url: str, backend: Backend, tmp_path: Path):
    secrets = {}
    async with backend.connection() as conn:
        for name, role in (("a", "submitter"), ("b", "submitter"), ("operator", "operator"),
                           ("admin", "admin")):
            _, secrets[name] = await auth.create_key(conn, name, role)
    with serve_and_work(database_url, tmp_path, "iso-worker", env={"JOBQ_AUTH": "on"}) as (
            url, _):
        w = World(url, secrets)
        w.secrets = secrets
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await w.anonymous.get("/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            await asyncio.sleep(0.2)
        try:
            yield w
        finally:
            await w.close()


async def test_a_submitter_never_reaches_another_keys_jobs(world: World):
    w = world

    async def submit(client: httpx.AsyncClient, name: str, owner: str, body: dict,
                     **headers: str) -> dict:
        response = await client.post("/api/v1/jobs", json=body, headers=headers)
        assert response.status_code == 201, response.text
        w.jobs[name] = {**response.json(), "owner": owner}
        return w.jobs[name]

    await submit(w.a, "done", "a", {"type": "system.noop", "key": "common"},
                 **{"Idempotency-Key": "idem-a"})
    await submit(w.a, "only_a", "a", {"type": "system.noop", "key": "only-a"})
    await submit(w.a, "failed", "a", {"type": "system.sleep", "max_attempts": 1,
                                      "payload": {"seconds": 0, "fail_times": 1,
                                                  "permanent": True}})
    await submit(w.a, "waiting", "a", {"type": "system.noop", "delay_seconds": 3600})
    conversion = await w.a.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                                data={"format": "glb", "key": "conv-a"})
    assert conversion.status_code == 201, conversion.text
    w.jobs["conversion"] = {**conversion.json(), "owner": "a"}
    v2 = await w.a.post("/api/v2/convert", files={"file": ("cube.obj", CUBE)},
                        data={"jobId": "v2-a"})
    assert v2.status_code == 200, v2.text
    w.jobs["v2"] = {"id": v2.json()["jobId"], "owner": "a"}
    # B with the same job key and Idempotency-Key as A's first job.
    await submit(w.b, "b_shared", "b", {"type": "system.sleep", "key": "common",
                                        "payload": {"seconds": 0}},
                 **{"Idempotency-Key": "idem-a"})
    for name in ("done", "only_a", "failed", "conversion", "v2", "b_shared"):
        client = w.b if name == "b_shared" else w.a
        await wait_finished(client, w.jobs[name]["id"])
    assert (await w.a.get(f"/api/v1/jobs/{w.jobs['failed']['id']}")).json()["status"] == "failed"

    ran = set()
    for check in CASES.values():
        if check in ran:
            continue
        ran.add(check)
        await check(w)
    assert ran == set(CASES.values())
