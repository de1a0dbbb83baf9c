"""TLS to PostgreSQL with libpq's parameters in DATABASE_URL (sslmode=verify-full, sslrootcert,
sslcert, sslkey), for every connection jobq opens: migrations, the API's pool, the worker's
pool and its LISTEN connection. The server is our own PostgreSQL 15 with ssl=on, a CA made
here with openssl, and a pg_hba that takes only TLS connections with a client certificate."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from service.db import admin, engine, migrate
from tests.support import free_port, scratch_dir, serve_and_work

pytestmark = pytest.mark.slow

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"
"""initdb and postgres refuse to run as root: the cluster belongs to this system user (the
cluster is our own, in a temporary directory, on a port of our own)."""


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def _make_certificate(directory: Path, name: str, subject: str, ca: str | None = None,
                      san: str | None = None) -> None:
    """`name`.key and `name`.crt: a CA's own (ca None) or one that `ca` signed."""
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    extensions = directory / f"{name}.ext"
    if ca is None:
        extensions.write_text("basicConstraints = critical, CA:TRUE\n"
                              "keyUsage = keyCertSign, cRLSign\n")
        signer = ["-signkey", f"{name}.key"]
    else:
        extensions.write_text("basicConstraints = CA:FALSE\n"
                              + (f"subjectAltName = {san}\n" if san else ""))
        signer = ["-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial"]
    _openssl("x509", "-req", "-in", f"{name}.csr", *signer, "-days", "2",
             "-extfile", extensions.name, "-out", f"{name}.crt", cwd=directory)
    os.chmod(directory / f"{name}.key", 0o600)


@dataclass
class TlsServer:
    port: int
    certs: Path

    def url(self, database: str, ca: str = "ca", client: str | None = "client") -> str:
        params = {"sslmode": "verify-full", "sslrootcert": str(self.certs / f"{ca}.crt")}
        if client:
            params |= {"sslcert": str(self.certs / f"{client}.crt"),
                       "sslkey": str(self.certs / f"{client}.key")}
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?{urlencode(params)}"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    if not (PG_BIN / "initdb").is_file() or shutil.which("openssl") is None:
        pytest.fail("this test needs PostgreSQL 15's binaries in /usr/lib/postgresql/15/bin "
                    "and openssl")
    user = pwd.getpwnam(SERVER_USER)
    run_as = {"user": user.pw_uid, "group": user.pw_gid} if os.geteuid() == 0 else {}
    with scratch_dir("jobq-tls-") as directory:
        certs = directory / "certs"
        certs.mkdir()
        _make_certificate(certs, "ca", "/CN=jobq test CA")
        _make_certificate(certs, "server", "/CN=127.0.0.1", ca="ca", san="IP:127.0.0.1")
        # cert authentication: the certificate's CN is the database user.
        _make_certificate(certs, "client", "/CN=postgres", ca="ca")
        # Another CA, which signed nothing the server shows.
        _make_certificate(certs, "other", "/CN=another CA")
        data = directory / "data"
        data.mkdir()
        if run_as:
            os.chmod(directory, 0o755)
            for path in (certs, data):
                shutil.chown(path, user.pw_uid, user.pw_gid)
            for path in certs.iterdir():
                shutil.chown(path, user.pw_uid, user.pw_gid)
        result = subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                 "--auth=reject", "--no-instructions"],
                                capture_output=True, text=True, cwd="/", timeout=120, **run_as)
        assert result.returncode == 0, result.stderr
        port = free_port()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{data}'\nssl = on\n"
                       f"ssl_cert_file = '{certs / 'server.crt'}'\n"
                       f"ssl_key_file = '{certs / 'server.key'}'\n"
                       f"ssl_ca_file = '{certs / 'ca.crt'}'\n")
        # TLS with a certificate the CA signed, or nothing.
        (data / "pg_hba.conf").write_text("hostssl all postgres 127.0.0.1/32 cert\n"
                                          "host all all 127.0.0.1/32 reject\n")
        ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w"]
        result = subprocess.run([*ctl, "start"], capture_output=True, text=True, cwd="/",
                                timeout=120, **run_as)
        assert result.returncode == 0, result.stdout + result.stderr + (
            (data / "server.log").read_text() if (data / "server.log").exists() else "")
        try:
            yield TlsServer(port=port, certs=certs)
        finally:
            subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True, cwd="/",
                           timeout=120, **run_as)


@pytest.fixture(scope="module")
def tls_database(tls_server: TlsServer) -> str:
    name = "jobq_tls"
    return asyncio.run(admin.ensure_database(tls_server.url("postgres"), name))


async def _tls_sessions(url: str) -> list[tuple[str, bool, str | None]]:
    """(application, TLS?, client certificate's subject) of every session on the database."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() "
            "AND a.pid <> pg_backend_pid()")
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


def test_a_connection_without_tls_or_without_a_client_certificate_is_refused(tls_server):
    """The server takes nothing but TLS with a client certificate: the tests below can only
    pass by using every parameter."""
    async def attempt(url: str) -> None:
        conn = await asyncpg.connect(url)
        await conn.close()

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        asyncio.run(attempt(f"postgresql://postgres@127.0.0.1:{tls_server.port}/postgres"
                            "?sslmode=disable"))
    with pytest.raises((asyncpg.InvalidAuthorizationSpecificationError, ConnectionError)):
        asyncio.run(attempt(tls_server.url("postgres", client=None)))


def test_verify_full_checks_the_server_against_sslrootcert(tls_server, tls_database):
    """A CA that did not sign the server's certificate fails every kind of connection."""
    url = tls_server.url("jobq_tls", ca="other")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(engine.connect(url))

    async def pooled() -> None:
        pool = engine.make_engine(url)
        try:
            async with engine.raw_connection(pool) as conn:
                await conn.fetchval("SELECT 1")
        finally:
            await pool.dispose()

    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(pooled())


def test_migrations_the_api_and_a_worker_run_over_tls(tls_server, tls_database, tmp_path):
    # Migrations: Alembic's engine.
    migrate.upgrade(tls_database)
    assert asyncio.run(migrate.check_schema(tls_database)).status is migrate.SchemaStatus.CURRENT

    # The API's pool, the worker's pool and its LISTEN connection, as real processes.
    with serve_and_work(tls_database, tmp_path, "tls-worker") as (url, processes):
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert all(p.poll() is None for p in processes), (
                    (tmp_path / "serve.log").read_text()[-3000:],
                    (tmp_path / "worker.log").read_text()[-3000:])
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.2)
            response = client.post(f"{url}/api/v1/jobs",
                                   json={"type": "system.sleep", "payload": {"seconds": 0.1}})
            assert response.status_code == 201, response.text
            job = response.json()["id"]
            deadline = time.monotonic() + 60
            while (status := client.get(f"{url}/api/v1/jobs/{job}").json()["status"]) \
                    != "succeeded":
                assert status in ("queued", "running"), status
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.2)
        sessions = asyncio.run(_tls_sessions(tls_database))
        assert all(p.poll() is None for p in processes)
    # Every session of the processes (pools, the worker's LISTEN) was TLS with our client
    # certificate; pg_hba would have refused any other, so this is the server's own word.
    assert len(sessions) >= 3, sessions
    assert all(is_tls and dn == "/CN=postgres" for _, is_tls, dn in sessions), sessions
