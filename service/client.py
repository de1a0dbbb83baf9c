"""A small client of jobq's REST API, for the people's commands of `jobq` (see console.py).

It speaks only HTTP: whatever it shows, a script with curl could see too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""Statuses a job never leaves (docs/lifecycle.md)."""


class ApiError(Exception):
    """The API refused a request (`status` 4xx), failed (5xx) or could not be reached (0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Download:
    path: Path
    size: int


class Client:
    """Calls to one jobq API; every failure is an ApiError carrying the API's `detail`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", f"{API}/jobs", json=body, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/jobs/{job_id}")

    def history(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/jobs/{job_id}/history")

    def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._json("GET", f"{API}/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"{API}/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"{API}/jobs/{job_id}/retry")

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"{API}/jobs/{job_id}")

    # -- conversions -------------------------------------------------------------------------

    def convert(self, files: list[Path], target: str, options: str | None = None,
                on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload the mesh (and its sidecars); `on_bytes` hears how many bytes went out."""
        handles = [_Counting(open(path, "rb"), on_bytes) for path in files]
        try:
            data = {"format": target, **({"options": options} if options else {})}
            parts = [("file", (path.name, handle, "application/octet-stream"))
                     for path, handle in zip(files, handles, strict=True)]
            # Uploads take as long as the bytes take; only the connect is bounded.
            return self._json("POST", f"{API}/conversions", data=data, files=parts,
                              timeout=httpx.Timeout(None, connect=10))
        finally:
            for handle in handles:
                handle.close()

    def download(self, job_id: str, directory: Path, name: str | None = None,
                 on_bytes: Callable[[int], None] | None = None,
                 on_total: Callable[[int], None] | None = None) -> Download:
        """Save the job's output file in `directory` (as `name`, else the server's name)."""
        try:
            with self._http.stream("GET", f"{API}/jobs/{job_id}/output",
                                   timeout=httpx.Timeout(None, connect=10)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                target = directory / (name or _attachment_name(response) or f"{job_id}.out")
                if on_total and response.headers.get("content-length"):
                    on_total(int(response.headers["content-length"]))
                size = 0
                with open(target, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        size += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                return Download(target, size)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the API at {self.url}: {exc}") from None

    def formats(self) -> dict[str, Any]:
        return self._json("GET", f"{API}/formats")

    # -- queues and workers ------------------------------------------------------------------

    def queues(self) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/queues")["items"]

    def queue(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/queues/{name}")

    def set_queue(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", f"{API}/queues/{name}", json=settings)

    def clean(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"{API}/queues/{name}/clean", json=body)

    def schedules(self) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/schedules")["items"]

    def schedule(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/schedules/{name}")

    def put_schedule(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("PUT", f"{API}/schedules/{name}", json=body)

    def delete_schedule(self, name: str) -> None:
        self._request("DELETE", f"{API}/schedules/{name}")

    def pause(self, queue: str, paused: bool) -> dict[str, Any]:
        action = "pause" if paused else "resume"
        return self._json("POST", f"{API}/queues/{queue}/{action}")

    def workers(self) -> list[dict[str, Any]]:
        return self._json("GET", f"{API}/workers")["items"]

    # -- plumbing ----------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(0, f"the answer of {self.url}{path} is not JSON: is --url a jobq "
                              "API?") from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the API at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response


def client_from_env(url: str | None) -> Client:
    """A client for `url`, else `JOBQ_URL`, else the local default."""
    return Client(url or os.environ.get("JOBQ_URL") or DEFAULT_URL)


def _error(response: httpx.Response) -> ApiError:
    detail = None
    try:
        body = response.json()
        detail = body.get("detail") or body.get("error") if isinstance(body, dict) else None
        problems = body.get("errors") if isinstance(body, dict) else None
        if problems and not all(str(e.get("field")) in (detail or "") for e in problems):
            # The detail does not name every field: list them after it.
            fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in problems)
            detail = f"{detail} ({fields})" if detail else fields
    except ValueError:
        pass
    return ApiError(response.status_code, detail or f"HTTP {response.status_code}")


_FILENAME = re.compile(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", re.IGNORECASE)


def _attachment_name(response: httpx.Response) -> str | None:
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    if not match:
        return None
    name = Path(httpx.URL("file:///" + match.group(1)).path).name  # undo %-escapes
    return name or None


class _Counting:
    """A file that reports the bytes read from it, for an upload progress bar."""

    def __init__(self, file: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._file = file
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if self._on_bytes and chunk:
            self._on_bytes(len(chunk))
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(64 * 1024):
            yield chunk

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
