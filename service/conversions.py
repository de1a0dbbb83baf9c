"""Conversion use-cases: accept an upload as a `mesh.convert` job, find a job's output."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from service import errors, jobs
from service.backend import Backend
from service.domain import formats, jobtypes
from service.storage import FileInfo, PostgresFileStore


@dataclass
class Upload:
    """One uploaded file part, read as a stream."""

    name: str
    content_type: str
    chunks: AsyncIterable[bytes]


def parse_options(raw: str | None) -> dict[str, Any]:
    """The `options` form field: a JSON object, or nothing."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        options = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise errors.InvalidRequest(
            f"options must be a JSON object: {exc}",
            [errors.FieldError("options", "not valid JSON")]) from None
    if not isinstance(options, dict):
        raise errors.InvalidRequest(
            "options must be a JSON object, e.g. {} or {\"merge\": true}.",
            [errors.FieldError("options", "must be a JSON object")])
    return options


def parse_seconds(raw: str | None, field: str) -> float | None:
    """A form field holding seconds, or nothing."""
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise errors.InvalidRequest(f"{field} must be a number of seconds, got {raw!r}.",
                                    [errors.FieldError(field, "not a number")]) from None


async def submit_conversion(
    backend: Backend,
    uploads: list[Upload],
    target: str | None,
    options: dict[str, Any],
    max_upload_bytes: int,
    reuse: bool = True,
    timeout_seconds: float | None = None,
    callback_url: str | None = None,
) -> dict[str, Any]:
    """Store the uploaded files and queue their conversion, in one transaction."""
    if not uploads:
        raise errors.InvalidRequest(
            "Attach the mesh as a multipart part named `file` (several for OBJ+MTL or "
            "glTF+BIN, or one ZIP).", [errors.FieldError("file", "missing")])
    target = formats.check_target(target)
    names = [formats.safe_name(u.name) for u in uploads]
    formats.pick_main(names)  # fails now, with a 4xx, if nothing here is a supported mesh
    request = jobs.JobRequest(
        type=jobtypes.MESH_CONVERT.name,
        payload={"format": target, "options": options, "reuse": reuse},
        timeout_seconds=timeout_seconds, callback_url=callback_url)
    store = PostgresFileStore(backend)
    async with backend.transaction() as conn:
        [job_id] = await jobs.enqueue(conn, [request], with_files=True)
        remaining = max_upload_bytes
        for position, (upload, name) in enumerate(zip(uploads, names, strict=True)):
            stored = await store.save(conn, upload.chunks, name, upload.content_type,
                                      max_size=remaining)
            if stored.size == 0:
                raise errors.InvalidRequest(
                    f"The file {name!r} is empty; upload the mesh's content.",
                    [errors.FieldError("file", "empty")])
            remaining -= stored.size
            await link(conn, job_id, "input", position, stored.id)
    return await jobs.get_job(backend, job_id)


async def link(conn: asyncpg.Connection, job_id: uuid.UUID, role: str, position: int,
               file_id: uuid.UUID) -> None:
    await conn.execute(
        "INSERT INTO job_files (job_id, role, position, file_id) VALUES ($1, $2, $3, $4)",
        job_id, role, position, file_id)


async def job_files(backend: Backend, job_id: uuid.UUID, role: str) -> list[FileInfo]:
    """A job's input or output files, in order."""
    async with backend.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT f.id, f.name, f.content_type, f.size, f.sha256
            FROM job_files jf JOIN files f ON f.id = jf.file_id
            WHERE jf.job_id = $1 AND jf.role = $2 ORDER BY jf.position
            """,
            job_id, role)
    return [FileInfo(**dict(r)) for r in rows]


async def output(backend: Backend, job_id: uuid.UUID) -> tuple[FileInfo, str]:
    """A job's output file and the name to download it as; NotFound until it exists."""
    job = await jobs.get_job(backend, job_id)
    outputs = await job_files(backend, job_id, "output")
    if not outputs:
        raise errors.NotFound(
            f"Job {job_id} has no output yet (status {job['status']}); "
            "it appears when a conversion succeeds.")
    inputs = await job_files(backend, job_id, "input")
    original = inputs[formats.pick_main([f.name for f in inputs])[0]].name if inputs else ""
    return outputs[0], formats.output_filename(original, job["payload"]["format"])
