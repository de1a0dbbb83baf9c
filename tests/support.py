"""Small helpers shared by test packages."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private directory outside pytest's tmp tree, for embedded PostgreSQL clusters: a
    concurrent pytest session takes other users' access away from its tmp root, which would
    cut the server (running as its own user) off from its data."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serve_and_work(database_url: str, logs: Path, worker_name: str,
                   env: dict[str, str] | None = None) -> Iterator[tuple[str, list]]:
    """`jobq serve` and one `jobq worker` as real processes on `database_url`, logging into
    `logs`; yields the API's URL and the processes, and stops both (SIGTERM, then kill)."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "JOBQ_POLL_SECONDS": "0.2",
                   "JOBQ_HEARTBEAT_SECONDS": "1", "JOBQ_PROGRESS_INTERVAL_SECONDS": "0.05",
                   "JOBQ_CONVERSION_PROCESSES": "1", "JOBQ_AUTH": "off", **(env or {})}
    processes = []
    for name, args in [("serve", ["serve", "--port", str(port)]),
                       ("worker", ["worker", "--concurrency", "4", "--name", worker_name])]:
        with open(logs / f"{name}.log", "w") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "service.cli", *args],
                                              env=environment, stdout=log,
                                              stderr=subprocess.STDOUT))
    try:
        yield f"http://127.0.0.1:{port}", processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
