"""Webhooks: a real local HTTP server receives them from a real worker and checks the
signatures; private targets are refused; every attempt is in the job's history."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import time
from pathlib import Path

import httpx

from service import attempts, jobs, webhooks
from service.backend import Backend
from service.domain import jobtypes
from workers import leases

ROOT = Path(__file__).resolve().parents[3]
CUBE = (ROOT / "tests" / "corpus" / "20mm-xyz-cube.stl").read_bytes()
SECRETS = "whsec_new,whsec_old"
ALLOW_LOCAL = {"JOBQ_WEBHOOK_SECRETS": SECRETS, "JOBQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Written out here, as a receiver would, rather than through service.webhooks."""
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                            hashlib.sha256).hexdigest()


async def deliveries_of(client: httpx.AsyncClient, job_id: str, count: int,
                        timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        items = (await client.get(f"/api/v1/jobs/{job_id}/deliveries")).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.1)


async def test_a_finished_job_is_posted_signed_and_the_delivery_recorded(
        client, start_worker, receiver):
    start_worker(env=ALLOW_LOCAL)
    response = await client.post("/api/v1/jobs", json={
        "type": "system.sleep", "payload": {"seconds": 0.1},
        "callback_url": f"{receiver.url}/hooks/jobq?x=1"})
    job_id = response.json()["id"]
    [request] = await receiver.wait_for(1, timeout=30)

    assert request.path == "/hooks/jobq?x=1"
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-jobq-event"] == "job.succeeded"
    timestamp = headers["x-jobq-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    # One signature per secret, newest first: a receiver knowing either secret verifies.
    assert headers["x-jobq-signature"] == ", ".join(
        expected_signature(s, timestamp, request.body) for s in SECRETS.split(","))
    body = json.loads(request.body)
    assert body["event"] == "job.succeeded"
    assert body["delivery_id"] == headers["x-jobq-delivery"]
    assert body["job"]["id"] == job_id and body["job"]["status"] == "succeeded"
    assert body["job"]["result"]["slept_seconds"] > 0
    assert body["job"]["finished_at"].endswith("Z")

    [delivery] = await deliveries_of(client, job_id, 1)
    assert delivery["outcome"] == "delivered" and delivery["status_code"] == 200
    assert delivery["delivery_id"] == headers["x-jobq-delivery"]
    history = (await client.get(f"/api/v1/jobs/{job_id}/history")).json()
    assert history["deliveries"] == [delivery]


async def test_a_failing_receiver_gets_the_delivery_again_and_each_attempt_is_recorded(
        client, start_worker, receiver):
    receiver.answers = [(500, {})]
    start_worker(env=ALLOW_LOCAL)
    response = await client.post("/api/v1/jobs", json={
        "type": "system.noop", "callback_url": receiver.url})
    job_id = response.json()["id"]
    # The type's backoff: about 5 s (4-5 with jitter) before the second attempt.
    requests = await receiver.wait_for(2, timeout=30)
    assert len(requests) == 2
    assert requests[0].headers["X-Jobq-Delivery"] == requests[1].headers["X-Jobq-Delivery"]
    items = await deliveries_of(client, job_id, 2)
    assert [(d["attempt"], d["outcome"], d["status_code"]) for d in items] == [
        (1, "failed", 500), (2, "delivered", 200)]
    assert "answered 500" in items[0]["error"]


async def test_a_private_target_is_refused_by_default(client, start_worker, receiver):
    start_worker(env={"JOBQ_WEBHOOK_SECRETS": SECRETS})  # no allowed networks
    ids = []
    for url in (receiver.url, f"http://localhost:{receiver.url.rsplit(':', 1)[1]}/",
                "http://169.254.169.254/latest/meta-data/"):
        response = await client.post("/api/v1/jobs", json={"type": "system.noop",
                                                           "callback_url": url})
        ids.append(response.json()["id"])
    for job_id in ids:
        [delivery] = await deliveries_of(client, job_id, 1)
        assert delivery["outcome"] == "refused", delivery
        assert "JOBQ_WEBHOOK_ALLOWED_NETWORKS" in delivery["error"]
    # A name is refused for what it resolves to.
    localhost = (await deliveries_of(client, ids[1], 1))[0]
    assert "localhost resolves to" in localhost["error"]
    # Refused is final: not tried again.
    await asyncio.sleep(6)
    assert len(await deliveries_of(client, ids[0], 1)) == 1
    assert receiver.requests == []


async def test_a_redirect_to_a_private_target_is_refused(client, start_worker, receiver):
    receiver.answers = [(307, {"Location": "http://10.0.0.7/steal"})]
    start_worker(env=ALLOW_LOCAL)
    response = await client.post("/api/v1/jobs", json={"type": "system.noop",
                                                       "callback_url": receiver.url})
    [delivery] = await deliveries_of(client, response.json()["id"], 1)
    assert delivery["outcome"] == "refused"
    assert delivery["url"] == "http://10.0.0.7/steal"
    assert len(receiver.requests) == 1


async def test_without_a_secret_nothing_is_sent_unsigned(client, start_worker, receiver):
    start_worker(env={"JOBQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"})
    response = await client.post("/api/v1/jobs", json={"type": "system.noop",
                                                       "callback_url": receiver.url})
    [delivery] = await deliveries_of(client, response.json()["id"], 1)
    assert delivery["outcome"] == "refused" and "JOBQ_WEBHOOK_SECRETS" in delivery["error"]
    assert receiver.requests == []


async def test_a_slow_receiver_times_out(receiver):
    """service.webhooks.deliver on its own against a real server that answers too late."""
    import http.server
    import threading

    from tests.support import free_port

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(2)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = await webhooks.deliver(f"http://127.0.0.1:{port}/", b"{}", {},
                                        webhooks.AddressPolicy(["127.0.0.1/32"]), timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert result.outcome == "failed" and result.error == "no answer within 0.5 s"
    assert result.duration_ms < 1900


async def test_the_delivery_is_submitted_with_the_outcome_or_not_at_all(backend: Backend):
    async with backend.transaction() as conn:
        [job_id] = await jobs.enqueue(conn, [jobs.JobRequest(
            type="system.noop", callback_url="https://example.com/hook")])
    for commit in (False, True):
        async with backend.connection() as conn:
            worker_id = await leases.register(conn, "t", "h", 1, [], 1)
            transaction = conn.transaction()
            await transaction.start()
            try:
                [claimed] = await leases.claim(conn, worker_id, "t", None, 1)
                await attempts.finish(conn, [attempts.Ending(claimed.attempt_id, "succeeded")])
            finally:
                await (transaction.commit() if commit else transaction.rollback())
            deliveries = await conn.fetch(
                "SELECT payload FROM job_overview WHERE type = 'system.webhook'")
        assert len(deliveries) == (1 if commit else 0)
    payload = deliveries[0]["payload"]
    assert payload["job_id"] == str(job_id) and payload["event"] == "succeeded"
    assert payload["url"] == "https://example.com/hook"
    assert payload["job"]["status"] == "succeeded"


async def test_clients_cannot_submit_webhook_jobs(client):
    response = await client.post("/api/v1/jobs", json={"type": "system.webhook", "payload": {}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "type"


def test_the_sql_trigger_and_the_declaration_agree():
    path = next((ROOT / "migrations" / "versions").glob("*_0011_*.py"))
    spec = importlib.util.spec_from_file_location("revision_0011", path)
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    declared = jobtypes.SYSTEM_WEBHOOK
    assert revision.WEBHOOK_QUEUE == declared.queue
    assert revision.WEBHOOK_MAX_ATTEMPTS == declared.retry.max_attempts
    assert revision.WEBHOOK_TIMEOUT_SECONDS == declared.timeout.total_seconds()


async def test_conversions_take_a_callback_url(client):
    response = await client.post(
        "/api/v1/conversions", files={"file": ("cube.stl", CUBE)},
        data={"format": "glb", "callback_url": "https://example.com/converted"})
    assert response.status_code == 201, response.text
    deliveries = await client.get(f"/api/v1/jobs/{response.json()['id']}/deliveries")
    assert deliveries.json() == {"callback_url": "https://example.com/converted", "items": []}
