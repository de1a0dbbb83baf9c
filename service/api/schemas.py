"""How request bodies are decoded, and the JSON shapes of responses (see shared API.md).
The request types themselves are the domain's (`service.domain.requests`)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
from litestar.dto import MsgspecDTO
from litestar.exceptions import ClientException, ValidationException

from service import errors
from service.domain import limits

API = "/api/v1"


class StrictJSON(MsgspecDTO):
    """Decodes a JSON body into its msgspec type with strict JSON types: `"priority": "1"` is
    a 422, not the number 1 (Litestar's own decoding converts strings to numbers)."""

    def decode_bytes(self, value: bytes) -> Any:
        try:
            return msgspec.json.decode(value, type=self.model_type, strict=True)
        except RecursionError:
            raise too_deep("body") from None
        except msgspec.ValidationError as exc:
            raise ValidationException(extra=[{"message": str(exc)}]) from exc
        except msgspec.DecodeError as exc:
            raise ClientException(str(exc)) from exc


def too_deep(field: str) -> errors.InvalidRequest:
    message = f"nests too deep (more than {limits.MAX_JSON_DEPTH} levels)"
    return errors.InvalidRequest(f"{field}: {message}.", [errors.FieldError(field, message)])


def parse_job_id(raw: str) -> uuid.UUID:
    """A job id from a URL. Any malformed id names no job: 404, as for an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise errors.JobNotFound(raw) from None


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 UTC."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_links(job_id: uuid.UUID) -> dict[str, str]:
    base = f"{API}/jobs/{job_id}"
    return {
        "self": base,
        "history": f"{base}/history",
        "stream": f"{base}/stream",
        "output": f"{base}/output",
    }


def shows_internals(principal: Any) -> bool:
    """Whether a caller may see tracebacks, server paths and workers' hosts and process ids:
    operators and admins (and jobq's own callers, which pass no principal), not submitters."""
    return principal is None or principal.sees_all


def job_json(row: dict[str, Any], principal: Any = None) -> dict[str, Any]:
    """A job_overview row as the public Job object (as `principal` may see it)."""
    return {
        "id": str(row["id"]),
        "type": row["type"],
        "queue": row["queue"],
        "status": row["status"],
        "priority": row["priority"],
        "key": row["key"],
        "progress": row["progress"],
        "stage": row["stage"],
        "progress_message": row["progress_message"],
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"],
        "timeout_seconds": row["timeout_seconds"],
        "cancel_requested": row["cancel_requested"] and row["status"] == "running",
        "payload": row["payload"],
        "result": row["result"],
        "error": public_error(row["error"], principal),
        "created_at": timestamp(row["created_at"]),
        "scheduled_at": timestamp(row["scheduled_at"]),
        "started_at": timestamp(row["started_at"]),
        "finished_at": timestamp(row["finished_at"]),
        "links": job_links(row["id"]),
    }


def public_error(error: dict[str, Any] | None, principal: Any = None) -> dict[str, Any] | None:
    """The job's error without its traceback (that stays in the history's attempts); for a
    submitter, with server paths in its message made relative too."""
    if error is None:
        return None
    shown = {k: error[k] for k in ("type", "message", "retryable") if k in error}
    if not shows_internals(principal) and isinstance(shown.get("message"), str):
        shown["message"] = scrub_paths(shown["message"])
    return shown


# Absolute paths in a traceback say where jobq and its Python live on the server: shown over
# REST relative to the project (`workers/outcomes.py`) or to site-packages
# (`site-packages/procrastinate/...`), any other absolute file by its name (docs/security.md).
_PROJECT = str(Path(__file__).resolve().parents[2]) + "/"
_FRAME_FILE = re.compile(r'File "(/[^"]*)"')
_SITE = re.compile(r"^.*/(site-packages|dist-packages)/")
_PROJECT_DIRS = ("service/", "workers/", "migrations/", "tests/")


def _relative(path: str) -> str:
    if path.startswith(_PROJECT):
        return path[len(_PROJECT):]
    site = _SITE.sub(r"\1/", path)
    if site != path:
        return site
    # Another machine's checkout: from the first of our package directories on.
    for name in _PROJECT_DIRS:
        at = path.find("/" + name)
        if at != -1:
            return path[at + 1:]
    return PurePosixPath(path).name


_ABSOLUTE = re.compile(r"(?<![\w:/.])/(?:[\w.\-]+/)+[\w.\-]*")


def scrub_paths(text: str) -> str:
    """Text with every absolute path in it made relative (as in tracebacks, below)."""
    return _ABSOLUTE.sub(lambda m: _relative(m[0]), text)


def redact_paths(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """An attempt's error with server paths in its traceback made relative."""
    if not error or not isinstance(error.get("traceback"), str):
        return error
    text = _FRAME_FILE.sub(lambda m: f'File "{_relative(m[1])}"', error["traceback"])
    return {**error, "traceback": text.replace(_PROJECT, "")}


def history_json(history: dict[str, list[dict[str, Any]]], principal: Any = None) -> dict[str, Any]:
    """A job's history. Operators see which worker ran each attempt and its traceback (paths
    made relative); a submitter sees neither: workers are named after their host and process
    id, and a traceback shows the server's code."""
    internals = shows_internals(principal)
    return {
        "items": [
            {
                "at": timestamp(e["at"]),
                "event": e["event"],
                "attempt": e["attempt"],
                "worker": e["worker_name"] if internals else None,
                "message": e["message"] if internals or e["message"] is None
                else scrub_paths(e["message"]),
                "error": public_error(e["error"], principal),
            }
            for e in history["events"]
        ],
        "attempts": [
            {
                "number": a["number"],
                "worker": a["worker_name"] if internals else None,
                "worker_id": a["worker_id"] if internals else None,
                "started_at": timestamp(a["started_at"]),
                "finished_at": timestamp(a["finished_at"]),
                "outcome": a["outcome"],
                "error": (redact_paths(a["error"]) if internals
                          else public_error(a["error"], principal)),
            }
            for a in history["attempts"]
        ],
        "deliveries": [delivery_json(d) for d in history["deliveries"]],
    }


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    """One attempt to deliver a job's webhook (docs/events.md)."""
    return {
        "delivery_id": str(row["delivery_id"]),
        "attempt": row["attempt"],
        "at": timestamp(row["at"]),
        "url": row["url"],
        "status_code": row["status_code"],
        "duration_ms": row["duration_ms"],
        "outcome": row["outcome"],
        "error": row["error"],
    }


def worker_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "host": row["host"],
        "pid": row["pid"],
        "queues": row["queues"],
        "concurrency": row["concurrency"],
        "started_at": timestamp(row["started_at"]),
        "last_heartbeat": timestamp(row["last_heartbeat"]),
        "heartbeat_age_seconds": round(float(row["heartbeat_age_seconds"]), 3),
        "running_jobs": [str(j) for j in row["running_jobs"]],
    }
