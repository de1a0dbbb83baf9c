"""`mesh.convert`: load the uploaded files, convert them in the sandbox, store the output.

The conversion's code (trimesh, numpy) is imported only in the sandbox's child processes, never
in the worker: a worker that converts nothing does not pay for it (`convert_in_child`).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from service import conversions, errors
from service.domain.builtin import ConvertPayload
from service.storage import FileInfo, PostgresFileStore
from workers import leases, sandbox
from workers.progress import JobRun


class ConversionCrashed(errors.TransientJobError):
    """The conversion's child process died without answering (killed, out of memory)."""


def cache_key(inputs: list[FileInfo], payload: ConvertPayload) -> str:
    """Content address of a conversion: the input bytes and names, the target, the options."""
    material = msgspec.json.encode(
        [[[f.name, f.sha256] for f in inputs], payload.format, payload.options], order="sorted")
    return hashlib.sha256(material).hexdigest()


async def convert_mesh(run: JobRun, payload: ConvertPayload) -> dict[str, Any]:
    """The mesh.convert job: converts in the worker's child processes (`run.sandbox`).
    A crashed or timed-out conversion may be tried again (the type allows one retry); an
    invalid mesh fails for good (InvalidMesh is permanent)."""
    pool: sandbox.Sandbox = run.sandbox
    store = PostgresFileStore(run.backend)
    inputs = await conversions.job_files(run.backend, run.job_id, "input")
    if not inputs:
        raise errors.PermanentJobError("This job has no input files to convert.")
    key = cache_key(inputs, payload)
    if payload.reuse and (reused := await _reuse(run, key)) is not None:
        return reused
    await run.progress(5, stage="stored")
    with tempfile.TemporaryDirectory(prefix="jobq-convert-") as work:
        folder = Path(work)
        files = [(f.name, await _download(store, f, folder / "in")) for f in inputs]
        await run.progress(10, stage="loading")

        async def report(percent: int, stage: str | None, message: str | None = None) -> None:
            await run.progress(10 + percent * 0.8, stage=stage, message=message)

        started = time.monotonic()
        try:
            path, filename, stats = await pool.run(
                convert_in_child, files, payload.format, payload.options, folder / "out",
                timeout=run.timeout, on_progress=report)
        except sandbox.SandboxTimeout:
            raise errors.JobTimeout(run.timeout) from None
        except sandbox.SandboxCrashed as exc:
            # Retried once: a crash may be the machine's (memory), not the mesh's.
            raise ConversionCrashed(str(exc)) from None
        await run.progress(90, stage="saving")
        stats = {**stats, "duration_ms": round((time.monotonic() - started) * 1000)}
        await _save(run, store, path, filename, payload.format, key, stats)
    return stats


def convert_in_child(files: list[tuple[str, Path]], target: str, options: dict[str, Any],
                      out_dir: Path,
                      progress: Callable[[int, str], None]) -> tuple[Path, str, dict]:
    """In a sandbox child: the conversion (already imported there by the forkserver's
    preload), its result as plain values, so that the worker never imports trimesh to read it."""
    from workers.convert import convert

    result = convert(files, target, options, out_dir, progress=progress)
    return result.path, result.filename, result.stats


async def _download(store: PostgresFileStore, info: FileInfo, folder: Path) -> Path:
    # The stored name is already a safe base name; it is kept because sidecar references
    # (mtllib, glTF buffer uris) name the other files.
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    path = folder / info.name
    # Local-disk writes of 1 MiB pieces take about a millisecond: not worth a thread.
    with open(path, "wb") as out:  # noqa: ASYNC230
        async for chunk in store.read(info.id):
            out.write(chunk)
    return path


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as source:  # noqa: ASYNC230 (as above)
        while chunk := source.read(1024 * 1024):
            yield chunk


async def _fenced(run: JobRun, conn) -> None:
    """Lock this attempt's lease for the transaction, or refuse: the job moved elsewhere."""
    if not await leases.hold_lease(conn, run.attempt_id):
        raise errors.PermanentJobError("the lease on this job was lost; output not stored")


async def _save(run: JobRun, store: PostgresFileStore, path: Path, filename: str, fmt: str,
                key: str, stats: dict[str, Any]) -> None:
    """Store the output, link it to the job and remember it for reuse: one fenced transaction."""
    from service.domain import formats

    async with run.backend.transaction() as conn:
        await _fenced(run, conn)
        await conn.execute(
            "DELETE FROM job_files WHERE job_id = $1 AND role = 'output'", run.job_id)
        info = await store.save(conn, _file_chunks(path), filename, formats.content_type(fmt))
        await conversions.link(conn, run.job_id, "output", 0, info.id)
        stats["output_bytes"] = info.size
        stats["output_sha256"] = info.sha256
        await conn.execute(
            "INSERT INTO conversion_cache (key, output_file_id, result) VALUES ($1, $2, $3) "
            "ON CONFLICT (key) DO NOTHING",
            key, info.id, msgspec.json.encode(stats).decode())


async def _reuse(run: JobRun, key: str) -> dict[str, Any] | None:
    """An earlier conversion of the same inputs, target and options, linked to this job."""
    async with run.backend.transaction() as conn:
        # The file is locked against deletion (FOR KEY SHARE), not the cache entry: a deletion
        # of the file's last job locks the file first and then removes the entry, so locking
        # them in the other order could deadlock (see jobq_forget_unused_file). A file being
        # deleted makes this wait, then find nothing: the conversion runs afresh.
        row = await conn.fetchrow(
            "SELECT c.output_file_id, c.result FROM conversion_cache AS c "
            "JOIN files AS f ON f.id = c.output_file_id WHERE c.key = $1 FOR KEY SHARE OF f", key)
        if row is None:
            return None
        await _fenced(run, conn)
        await conn.execute(
            "DELETE FROM job_files WHERE job_id = $1 AND role = 'output'", run.job_id)
        await conversions.link(conn, run.job_id, "output", 0, row["output_file_id"])
    return {**row["result"], "reused": True}
