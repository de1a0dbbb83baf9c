"""Conversion use-cases: accept an upload as a `mesh.convert` job, find a job's output."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service import auth, errors, jobs
from service.backend import Backend
from service.domain import formats, jobtypes, requests
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
    job: dict[str, Any] | None = None,
    principal: auth.Principal = auth.OPEN,
) -> tuple[dict[str, Any], bool]:
    """Store the uploaded files and queue their conversion, in one transaction. `job`: the
    common job options (priority, max_attempts, delay_seconds, run_at, key, callback_url,
    queue, backoff), checked like those of POST /api/v1/jobs. Returns the job and whether it
    was created now (False: its key names an existing job, which is returned untouched).
    `principal`: the API key submitting; its rights and limits (upload bytes per day among
    them) are checked in the same transaction, so a refused upload keeps nothing."""
    if not uploads:
        raise errors.InvalidRequest(
            "Attach the mesh as a multipart part named `file` (several for OBJ+MTL or "
            "glTF+BIN, or one ZIP).", [errors.FieldError("file", "missing")])
    target = formats.check_target(target)
    names = [formats.safe_name(u.name) for u in uploads]
    formats.pick_main(names)  # fails now, with a 4xx, if nothing here is a supported mesh
    request = jobs.JobRequest(
        type=jobtypes.get("mesh.convert").name,
        payload={"format": target, "options": options, "reuse": reuse},
        timeout_seconds=timeout_seconds, **(job or {}))
    store = PostgresFileStore(backend)
    # The body has arrived in full (spooled) before this: a connection is held only for the
    # write, and only by as many uploads at once as the backend allows.
    async with backend.bulk_writes, backend.transaction() as conn:
        [(job_id, created)] = await jobs.enqueue_keyed(conn, [request], with_files=True,
                                                       principal=principal)
        if created:
            size = await _store(conn, store, job_id, uploads, names, max_upload_bytes)
            await auth.charge_upload(conn, principal, size)
    return await jobs.get_job(backend, job_id), created


async def _store(conn: asyncpg.Connection, store: PostgresFileStore, job_id: uuid.UUID,
                 uploads: list[Upload], names: list[str], max_upload_bytes: int) -> int:
    """Store the uploads as the job's inputs; returns their bytes together."""
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
    return max_upload_bytes - remaining


def _number(raw: str, field: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        word = "a whole number" if kind is int else "a number"
        raise errors.InvalidRequest(f"{field} must be {word}, got {raw!r}.",
                                    [errors.FieldError(field, f"not {word}")]) from None


JOB_FIELDS: dict[str, Any] = {
    "priority": int, "max_attempts": int, "delay_seconds": float, "run_at": str, "key": str,
    "callback_url": str, "queue": str, "backoff": dict,
}
"""The common job options a conversion form may carry, with their types."""


def job_options(fields: dict[str, str]) -> dict[str, Any]:
    """The common job options among a conversion form's fields (as their JobRequest types).
    Checked again with the rest of the request (requests.plan), which names a bad value."""
    chosen: dict[str, Any] = {}
    for name, kind in JOB_FIELDS.items():
        raw = fields.get(name)
        if raw is None or raw.strip() == "":
            continue
        if kind in (int, float):
            chosen[name] = _number(raw, name, kind)
        elif kind is dict:
            chosen[name] = _backoff(raw)
        elif name == "run_at":
            chosen[name] = _time(raw)
        else:
            chosen[name] = raw
    return chosen


def _backoff(raw: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=requests.Backoff, strict=True)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise errors.InvalidRequest(
            f"backoff must be a JSON object like {{\"kind\": \"fixed\", \"base_seconds\": 5}}: "
            f"{exc}", [errors.FieldError("backoff", str(exc))]) from None


def _time(raw: str) -> datetime:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidRequest(
            f"run_at must be an RFC 3339 time like 2026-01-01T12:00:00Z, got {raw!r}.",
            [errors.FieldError("run_at", "not an RFC 3339 time")]) from None


def check_fields(fields: dict[str, str], known: set[str]) -> None:
    """InvalidRequest naming every form field that is not one of `known`: nothing a client
    sends is silently ignored."""
    unknown = sorted(set(fields) - known)
    if unknown:
        raise errors.InvalidRequest(
            f"Unknown form field(s): {', '.join(unknown)}. Accepted: "
            f"{', '.join(sorted(known))}.",
            [errors.FieldError(name, "unknown field") for name in unknown])


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


async def output(backend: Backend, job_id: uuid.UUID,
                 scope: uuid.UUID | None = None) -> tuple[FileInfo, str]:
    """A job's output file and the name to download it as; NotFound until it exists (and for
    another API key's job, with `scope`)."""
    job = await jobs.get_job(backend, job_id, scope)
    outputs = await job_files(backend, job_id, "output")
    if not outputs:
        raise errors.NotFound(
            f"Job {job_id} has no output yet (status {job['status']}); "
            "it appears when a conversion succeeds.")
    inputs = await job_files(backend, job_id, "input")
    original = inputs[formats.pick_main([f.name for f in inputs])[0]].name if inputs else ""
    return outputs[0], formats.output_filename(original, job["payload"]["format"])
