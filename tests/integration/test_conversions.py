"""Conversions end to end: upload through the API, a real worker converts, download."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import pytest
import trimesh

from service.api.app import create_app
from service.settings import Settings
from tests.integration.test_worker import eventually, history, status_is

CORPUS = Path(__file__).resolve().parents[1] / "corpus"  # see tests/corpus/NOTICE


def parts(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (n, (CORPUS / n).read_bytes(), "application/octet-stream")) for n in names]


async def upload(client, *names: str, fmt: str = "glb", **fields) -> httpx.Response:
    return await client.post("/api/v1/conversions", files=parts(*names),
                              data={"format": fmt, **fields})


async def test_formats_lists_what_converts(client):
    body = (await client.get("/api/v1/formats")).json()
    assert {"obj", "stl", "ply", "off", "glb", "gltf", "dae", "3mf"} <= set(body["input"])
    assert {"glb", "gltf", "obj", "stl", "ply", "off"} <= set(body["output"])


@pytest.mark.parametrize(
    ("files", "data", "status", "field"),
    [
        # No file part, but multipart (a form without files would be urlencoded: a 415).
        ([("format", (None, b"glb"))], {}, 422, "file"),
        (parts("cube.OBJ"), {"format": "fbx"}, 422, "format"),
        ([("file", ("model.fbx", b"FBX", "application/octet-stream"))], {"format": "glb"}, 422,
         "file"),
        ([("file", ("cube.obj", b"", "text/plain"))], {"format": "glb"}, 422, "file"),
        (parts("cube.OBJ"), {"format": "glb", "options": "{not json"}, 422, "options"),
    ],
)
async def test_bad_uploads_get_a_4xx_naming_the_problem(client, files, data, status, field):
    response = await client.post("/api/v1/conversions", files=files or None, data=data)
    assert response.status_code == status, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_upload_over_the_limit_gets_413(backend, database_url):
    settings = Settings(database_url=database_url, max_upload_bytes=5000, allowed_hosts=("t",),
                        auth="off")
    transport = httpx.ASGITransport(app=create_app(settings, backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as small:
        response = await upload(small, "bunny.ply")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


async def test_mesh_convert_cannot_be_submitted_without_files(client):
    response = await client.post("/api/v1/jobs", json={"type": "mesh.convert",
                                                       "payload": {"format": "glb"}})
    assert response.status_code == 422
    assert "/api/v1/conversions" in response.json()["detail"]


async def test_obj_converts_to_glb_and_downloads_with_its_name(client, start_worker):
    response = await upload(client, "rabbit.obj", "rabbit.mtl")
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["type"] == "mesh.convert" and job["queue"] == "conversions"
    assert (await client.get(f"/api/v1/jobs/{job['id']}/output")).status_code == 404
    start_worker()
    done = await eventually(status_is(client, job["id"], "succeeded", "failed"), timeout=60)
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["input_format"] == "obj" and result["output_format"] == "glb"
    assert result["faces"] == 1252 and result["converter"] == "trimesh"
    assert result["duration_ms"] >= 0 and result["output_bytes"] > 0
    stages = [e for e in (await history(client, job["id"]))["items"]]
    assert stages[-1]["event"] == "succeeded"
    download = await client.get(f"/api/v1/jobs/{job['id']}/output")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("model/gltf-binary")
    assert 'filename="rabbit.glb"' in download.headers["content-disposition"]
    back = trimesh.load(io.BytesIO(download.content), file_type="glb")
    assert sum(len(g.faces) for g in back.geometry.values()) == 1252


async def test_same_input_again_reuses_the_output(client, backend, start_worker):
    start_worker()
    first = (await upload(client, "cube.OBJ", fmt="stl")).json()
    await eventually(status_is(client, first["id"], "succeeded"), timeout=60)
    second = (await upload(client, "cube.OBJ", fmt="stl")).json()
    done = await eventually(status_is(client, second["id"], "succeeded"), timeout=60)
    assert done["result"]["reused"] is True
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM job_files WHERE role = 'output'") == 2
        assert await conn.fetchval(
            "SELECT count(DISTINCT file_id) FROM job_files WHERE role = 'output'") == 1
    await client.delete(f"/api/v1/jobs/{first['id']}")
    assert (await client.get(f"/api/v1/jobs/{second['id']}/output")).status_code == 200
    await client.delete(f"/api/v1/jobs/{second['id']}")
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files") == 0, "files go with their jobs"


async def test_broken_file_fails_for_good_with_a_reason(client, start_worker):
    start_worker()
    job = (await upload(client, "empty.obj")).json()
    failed = await eventually(status_is(client, job["id"], "failed"), timeout=60)
    assert failed["attempts"] == 1
    assert failed["error"]["type"] == "InvalidMesh"
    assert "no geometry" in failed["error"]["message"]


async def test_a_crashed_conversion_is_retried_once(client, start_worker):
    # 256 MB of address space is less than a child needs for a 327,680-face sphere: it runs
    # out of memory on every attempt, as on a machine short of memory.
    start_worker(env={"JOBQ_CONVERSION_MEMORY_MB": "256"})
    data = trimesh.creation.icosphere(subdivisions=7).export(file_type="obj").encode()
    job = (await client.post("/api/v1/conversions", data={"format": "glb"},
                             files=[("file", ("sphere.obj", data, "text/plain"))])).json()
    failed = await eventually(status_is(client, job["id"], "failed"), timeout=60)
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "failed"]
    assert failed["error"]["type"] == "ConversionCrashed", failed["error"]
    assert failed["error"]["retryable"] is True


async def test_conversion_past_its_timeout_fails_and_the_worker_goes_on(
    client, start_worker, tmp_path
):
    start_worker()
    sphere = trimesh.creation.icosphere(subdivisions=7)
    data = sphere.export(file_type="obj").encode()
    response = await client.post(
        "/api/v1/conversions", files=[("file", ("sphere.obj", data, "text/plain"))],
        data={"format": "glb", "timeout_seconds": "0.2"})
    assert response.status_code == 201, response.text
    failed = await eventually(status_is(client, response.json()["id"], "failed"), timeout=60)
    assert failed["error"]["type"] == "JobTimeout"
    record = await history(client, failed["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "failed"], "retried once"
    after = (await upload(client, "cube.OBJ")).json()
    await eventually(status_is(client, after["id"], "succeeded"), timeout=60)


async def test_v2_client_submits_polls_and_downloads(client, start_worker):
    start_worker()
    response = await client.post("/api/v2/convert", files=parts("Duck.glb"))
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Conversion job submitted"
    assert body["statusUrl"] == f"/api/v2/status/{body['jobId']}"

    async def completed() -> dict | None:
        status = (await client.get(body["statusUrl"])).json()
        assert status["status"] in ("waiting", "delayed", "active", "completed", "failed")
        assert 0 <= status["progress"] <= 100
        return status if status["status"] in ("completed", "failed") else None

    status = await eventually(completed, timeout=60)
    assert status["status"] == "completed", status
    assert status["converter"] == "trimesh" and status["duration"] >= 0
    download = await client.get(status["downloadUrl"])
    assert download.status_code == 200 and download.content[:4] == b"glTF"
    stats = (await client.get("/api/v2/queue/stats")).json()
    assert stats["completed"] == 1 and set(stats) == {
        "waiting", "active", "completed", "failed", "delayed"}


async def test_v2_errors_keep_their_old_shape(client, start_worker):
    assert (await client.get("/api/v2/status/nope")).json() == {"error": "Job not found"}
    assert (await client.get("/api/v2/status/nope")).status_code == 404
    assert (await client.delete("/api/v2/jobs/nope")).status_code == 404
    waiting = (await client.post("/api/v2/convert", files=parts("cube.OBJ"))).json()
    removed = await client.delete(f"/api/v2/jobs/{waiting['jobId']}")
    assert removed.json() == {"message": "Job cancelled", "jobId": waiting["jobId"]}
    broken = (await client.post("/api/v2/convert", files=parts("empty.stl"))).json()
    start_worker()

    async def failed() -> dict | None:
        status = (await client.get(broken["statusUrl"])).json()
        return status if status["status"] == "failed" else None

    status = await eventually(failed, timeout=60)
    assert "no geometry" in status["error"]


V2_MODELS = [
    ["20mm-xyz-cube.stl"], ["Duck.glb"], ["P_XPM_0331_01.3mf"],
    ["TestScene.gltf", "TestScene.bin"], ["ballA.off"], ["bunny.ply"], ["busted.STL"],
    ["comments.off"], ["cube.OBJ"], ["cube_invalid_shininess.dae"], ["multibody.stl"],
    ["notenoughindices.obj"], ["obj_points.obj"], ["points_ascii.ply"],
    ["points_cloudcompare.xyz"], ["rabbit.obj", "rabbit.mtl"],
]


async def test_v2_gives_a_glb_for_every_loadable_model_and_a_reason_for_broken_ones(
    client, start_worker
):
    start_worker()
    submitted = {}
    for names in [*V2_MODELS, ["empty.obj"], ["empty.stl"]]:
        response = await client.post("/api/v2/convert", files=parts(*names))
        assert response.status_code == 200, (names, response.text)
        submitted[names[0]] = response.json()["statusUrl"]

    async def all_done() -> dict | None:
        states = {name: (await client.get(url)).json() for name, url in submitted.items()}
        finished = all(s["status"] in ("completed", "failed") for s in states.values())
        return states if finished else None

    states = await eventually(all_done, timeout=120, interval=0.5)
    for name, state in states.items():
        if name.startswith("empty"):
            assert state["status"] == "failed" and "no geometry" in state["error"], state
            continue
        assert state["status"] == "completed", (name, state)
        glb = (await client.get(state["downloadUrl"])).content
        back = trimesh.load(io.BytesIO(glb), file_type="glb")
        assert len(back.geometry) >= 1 and back.bounds is not None, name


# -- the common job options: taken, or a 4xx naming the field ----------------------------------


async def test_conversions_take_the_common_job_options(client, backend):
    response = await upload(client, "cube.OBJ", priority="7", max_attempts="5",
                            delay_seconds="60", key="cube-1",
                            callback_url="https://example.test/done",
                            backoff='{"kind": "fixed", "base_seconds": 3}')
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["priority"], job["max_attempts"], job["status"], job["key"]) == (
        7, 5, "scheduled", "cube-1")
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT callback_url, backoff FROM jobs WHERE id = $1",
                                  uuid.UUID(job["id"]))
    assert row["callback_url"] == "https://example.test/done"
    assert row["backoff"] == {"kind": "fixed", "base_seconds": 3}
    again = await upload(client, "Duck.glb", key="cube-1")
    assert (again.status_code, again.json()["id"]) == (200, job["id"])
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files") == 1, "nothing stored twice"


@pytest.mark.parametrize(("fields", "field"), [
    ({"attempts": "3"}, "attempts"),
    ({"priority": "high"}, "priority"),
    ({"priority": "5000"}, "priority"),
    ({"max_attempts": "0"}, "max_attempts"),
    ({"delay_seconds": "soon"}, "delay_seconds"),
    ({"callback_url": "ftp://x"}, "callback_url"),
    ({"backoff": '{"kind": "linear"}'}, "backoff.kind"),
    ({"reuse": "maybe"}, "reuse"),
])
async def test_conversion_options_that_cannot_be_used_are_a_422_naming_them(client, fields,
                                                                             field):
    response = await upload(client, "cube.OBJ", **fields)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_v2_takes_bullmqs_job_options(client):
    response = await client.post("/api/v2/convert", files=parts("cube.OBJ"), data={
        "format": "stl", "priority": "3", "attempts": "4", "delay": "1500",
        "jobId": "legacy-7", "backoff": '{"type": "exponential", "delay": 2000}'})
    assert response.status_code == 200, response.text
    job = (await client.get(f"/api/v1/jobs/{response.json()['jobId']}")).json()
    assert (job["priority"], job["max_attempts"], job["key"], job["status"]) == (
        -3, 4, "legacy-7", "scheduled")
    assert job["payload"]["format"] == "stl"
    again = await client.post("/api/v2/convert", files=parts("cube.OBJ"),
                              data={"jobId": "legacy-7"})
    assert again.json()["jobId"] == job["id"]


@pytest.mark.parametrize(("fields", "says"), [
    ({"removeOnComplete": "true"}, "removeOnComplete"),
    ({"attempts": "two"}, "attempts"),
    ({"backoff": '{"type": "linear"}'}, "backoff"),
])
async def test_v2_refuses_what_it_cannot_honour_in_its_own_error_shape(client, fields, says):
    response = await client.post("/api/v2/convert", files=parts("cube.OBJ"), data=fields)
    assert response.status_code == 400
    assert says in response.json()["error"]
