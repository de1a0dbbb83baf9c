"""Fixtures for the events-out tests: real `jobq serve` processes (streams and metrics need
HTTP as clients see it), and a local HTTP server in a thread that records what it receives
(webhooks)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import free_port


@dataclass
class Api:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


ApiFactory = Callable[..., Api]


@pytest.fixture
def start_api(database_url: str, tmp_path: Path) -> Iterator[ApiFactory]:
    """Start real `jobq serve` processes on free ports; each is stopped at the end."""
    started: list[Api] = []

    def start(env: dict[str, str] | None = None) -> Api:
        port = free_port()
        log_path = tmp_path / f"api-{len(started)}.log"
        # Authentication off unless `env` turns it on: these tests are about what the API
        # processes do; tests/integration/test_auth.py is about keys.
        environment = {**os.environ, "DATABASE_URL": database_url, "JOBQ_AUTH": "off",
                       **(env or {})}
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                env=environment, stdout=log, stderr=subprocess.STDOUT)
        api = Api(process, f"http://127.0.0.1:{port}", log_path)
        started.append(api)
        _wait_ready(api)
        return api

    yield start
    for api in started:
        if api.process.poll() is None:
            api.process.send_signal(signal.SIGTERM)
    for api in started:
        try:
            api.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api.process.kill()
            api.process.wait()


def _wait_ready(api: Api, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert api.process.poll() is None, api.log()[-3000:]
        try:
            if httpx.get(f"{api.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("jobq serve never became ready:\n" + api.log()[-3000:])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server: answers each POST with the next of `answers` (then 200)."""

    url: str
    loop: asyncio.AbstractEventLoop
    requests: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, request: Received) -> None:
        """From the server's thread."""
        self.requests.append(request)
        self.loop.call_soon_threadsafe(self._arrived.set)

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The requests received, once there are `count` (or `timeout` seconds passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.requests) < count:
                    self._arrived.clear()
                    if len(self.requests) < count:
                        await self._arrived.wait()
        return list(self.requests)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    state = Receiver(f"http://127.0.0.1:{port}", asyncio.get_running_loop())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.record(Received(self.path, dict(self.headers), body))
            status, headers = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
