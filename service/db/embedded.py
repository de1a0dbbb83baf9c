"""An embedded PostgreSQL server for `jobq up` without DATABASE_URL, and for the tests.

The binaries come from the `pgserver` package (PostgreSQL 16, from PyPI); this module runs them
itself so it can guarantee what the package does not: the server dies with the process that
started it (Linux parent-death signal, even on SIGKILL), and a server left behind by an earlier
crash does not block the next start. PostgreSQL refuses to run as root, so as root the server
runs as a dedicated system user, created on first use.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pwd
import signal
import stat
import subprocess
import time
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

SERVER_USER = "jobq-postgres"
"""The system user the server runs as when jobq runs as root."""

SUPERUSER = "postgres"
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up or started."""


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR, which we do not use
        warnings.simplefilter("ignore")
        import pgserver  # the binaries' package; imported late, only embedded mode needs it

    path = Path(pgserver.__file__).parent / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {path}")
    return path


def _die_with_parent() -> None:
    """In the server's process, after the uid change (which clears it): when the process that
    started us dies, fast-shutdown (SIGINT)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_pid(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, served on a Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        # Socket paths are limited to ~107 bytes: a short directory of our own under /tmp.
        self.socket_dir = Path("/tmp") / f"jobq-pg-{digest}"
        self._process: subprocess.Popen | None = None
        self._as_root = os.geteuid() == 0
        self._user = pwd.getpwnam(SERVER_USER) if self._as_root and _user_exists() else None

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (creating the cluster on first use); returns its URL.

        Call it from the main thread: the parent-death signal fires when the starting
        *thread* exits."""
        if self._process is not None and self._process.poll() is None:
            return self.url
        bin_dir = _bin_dir()
        self._prepare_user(bin_dir)
        self._stop_leftover_server()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._prepare_socket_dir()
        log = self.data_dir / "server.log"
        with open(log, "ab") as out:
            self._process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data_dir),
                 "-k", str(self.socket_dir), "-c", "listen_addresses=",
                 "-c", "max_connections=200", "-c", "shared_buffers=128MB",
                 "-c", "unix_socket_permissions=0777"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **self._as_server_user(), preexec_fn=_die_with_parent,
            )
        if self._as_root and self._user is not None:
            os.chown(log, self._user.pw_uid, self._user.pw_gid)
        self._wait_ready(bin_dir, log)
        logger.info("embedded PostgreSQL running (pid %d), data in %s", self._process.pid,
                    self.data_dir)
        return self.url

    def _as_server_user(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _prepare_user(self, bin_dir: Path) -> None:
        if not self._as_root:
            return
        if self._user is None:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 SERVER_USER], check=True, capture_output=True)
            self._user = pwd.getpwnam(SERVER_USER)
            logger.info("created system user %s to run the embedded PostgreSQL", SERVER_USER)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        # The server user must be able to pass through the parents of its data and binaries.
        for path in (self.data_dir, bin_dir):
            _allow_traverse(path.parent)

    def _initdb(self, bin_dir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True, **self._as_server_user(),
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        if self._user is not None:
            os.chown(self.socket_dir, self._user.pw_uid, self._user.pw_gid)

    def _stop_leftover_server(self) -> None:
        """A server still running on this cluster: stop it if its owner is gone, refuse if a
        live jobq still uses it."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not _pid_alive(pid):
            return  # a stale file: PostgreSQL replaces it itself
        parent = _parent_pid(pid)
        if parent not in (None, 1) and _pid_alive(parent):
            raise EmbeddedPostgresError(
                f"PostgreSQL (pid {pid}) already runs on {self.data_dir} for process {parent}; "
                "stop that jobq first or use another JOBQ_DATA_DIR.")
        logger.warning("stopping an orphaned PostgreSQL (pid %d) left on %s", pid, self.data_dir)
        os.kill(pid, signal.SIGINT)
        _wait_gone(pid, 30)

    def _wait_ready(self, bin_dir: Path, log: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited at start (code {self._process.returncode}):\n"
                    + _tail(log))
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-U", SUPERUSER],
                capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedPostgresError("PostgreSQL did not accept connections in time:\n"
                                    + _tail(log))

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Fast shutdown (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGQUIT)  # immediate shutdown; recovery on next start
            process.wait(timeout=10)
        logger.info("embedded PostgreSQL stopped")


def _user_exists() -> bool:
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return False
    return True


def _allow_traverse(directory: Path) -> None:
    """Add o+x (search, not read) to `directory` and its parents where missing."""
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, mode | stat.S_IXOTH)
            logger.info("allowed %s to traverse %s (o+x)", SERVER_USER, path)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


