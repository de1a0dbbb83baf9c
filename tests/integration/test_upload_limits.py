"""Uploads under control (issue 13, item 4): byte limits hold while the body streams, whatever
its framing (chunked bodies carry no Content-Length), for file parts and ordinary fields; and
a database connection is held only for the write, by a bounded number of uploads at once, so
that concurrent uploads never starve other clients of the pool."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from service.api.app import create_app
from service.api.forms import MAX_FIELD_BYTES, MAX_PARTS
from service.backend import Backend
from service.settings import Settings
from tests.support import free_port

PROBLEM = "application/problem+json"
OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
LIMIT = 2_000_000  # JOBQ_MAX_UPLOAD_BYTES in these tests
PIECE = 64 * 1024


async def counts(backend: Backend) -> tuple[int, int]:
    async with backend.connection() as conn:
        return (await conn.fetchval("SELECT count(*) FROM jobs"),
                await conn.fetchval("SELECT count(*) FROM files"))


@pytest.fixture
async def small_client(database_url: str, backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=database_url, allowed_hosts=("jobq.test",), auth="off",
                        max_upload_bytes=LIMIT, max_body_bytes=100_000)
    transport = httpx.ASGITransport(app=create_app(settings, backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://jobq.test",
                                 timeout=60) as client:
        yield client


class Body:
    """A multipart body produced piece by piece (httpx sends it chunked, without
    Content-Length), counting what the server pulled from it."""

    def __init__(self, parts: list[tuple[bytes, int | bytes]], boundary: bytes = b"B") -> None:
        self.parts = parts  # (part headers, its body, or its size: that many bytes of 'a')
        self.boundary = boundary
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for headers, size in self.parts:
            yield self._count(b"--" + self.boundary + b"\r\n" + headers + b"\r\n\r\n")
            if isinstance(size, bytes):
                yield self._count(size)
                size = 0
            while size > 0:
                piece = min(size, PIECE)
                size -= piece
                yield self._count(b"a" * piece)
            yield self._count(b"\r\n")
        yield self._count(b"--" + self.boundary + b"--\r\n")

    def _count(self, data: bytes) -> bytes:
        self.sent += len(data)
        return data

    headers = {"content-type": "multipart/form-data; boundary=B"}


FORMAT = (b'Content-Disposition: form-data; name="format"', b"glb")


def file_part(size: int, name: bytes = b"file", filename: bytes = b"big.obj"):
    return (b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename
            + b'"\r\nContent-Type: text/plain', size)


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


@pytest.mark.parametrize("route", ["/api/v1/conversions", "/api/v2/convert"])
async def test_chunked_file_part_over_the_limit_stops_while_streaming(small_client, backend,
                                                                      route):
    body = Body([FORMAT, file_part(600_000_000)])
    response = await small_client.post(route, content=body, headers=Body.headers)
    assert response.status_code == 413, response.text
    if route.startswith("/api/v1"):
        assert "larger than the limit" in assert_problem(response, 413)["detail"]
    # refused once the limit was passed: 600 MB were never read
    assert body.sent < LIMIT + 4 * PIECE, body.sent
    assert await counts(backend) == (0, 0)


async def test_chunked_ordinary_field_over_its_limit_stops_while_streaming(small_client,
                                                                           backend):
    body = Body([(b'Content-Disposition: form-data; name="options"', 300_000_000),
                 file_part(len(OBJ))])
    response = await small_client.post("/api/v1/conversions", content=body,
                                       headers=Body.headers)
    detail = assert_problem(response, 413)["detail"]
    assert "options" in detail and f"{MAX_FIELD_BYTES:,}" in detail
    assert body.sent < MAX_FIELD_BYTES + 4 * PIECE, body.sent
    assert await counts(backend) == (0, 0)


async def test_a_file_under_another_name_counts_against_the_body_limit(small_client, backend):
    body = Body([FORMAT, file_part(600_000_000, name=b"other")])
    response = await small_client.post("/api/v1/conversions", content=body,
                                       headers=Body.headers)
    assert_problem(response, 413)
    assert body.sent < LIMIT + 1_000_000 + 4 * PIECE, body.sent
    assert await counts(backend) == (0, 0)


async def test_too_many_parts_is_413(small_client, backend):
    parts = [(f'Content-Disposition: form-data; name="f{i}"'.encode(), 1)
             for i in range(MAX_PARTS + 5)]
    response = await small_client.post("/api/v1/conversions", content=Body(parts),
                                       headers=Body.headers)
    assert_problem(response, 413)
    assert await counts(backend) == (0, 0)


@pytest.mark.parametrize("content,headers,status", [
    (b"--B\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nglb",  # never ends
     {"content-type": "multipart/form-data; boundary=B"}, 400),
    (b"garbage", {"content-type": "multipart/form-data; boundary=B"}, 400),
    (b"", {"content-type": "multipart/form-data; boundary=B"}, 400),
    (b"x", {"content-type": "multipart/form-data"}, 400),  # no boundary
    (b"--B\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\n\xff\xfe\r\n--B--\r\n",
     {"content-type": "multipart/form-data; boundary=B"}, 422),  # not UTF-8
    (b"--B\r\nContent-Disposition: form-data; name=\"format\"\r\nContent-Type: text/plain; "
     b"charset=latin-1\r\n\r\nglb\r\n--B--\r\n",
     {"content-type": "multipart/form-data; boundary=B"}, 422),  # a charset jobq won't guess
])
async def test_malformed_forms_are_4xx_problems(small_client, backend, content, headers, status):
    for route in ("/api/v1/conversions", "/api/v2/convert"):
        response = await small_client.post(route, content=content, headers=headers)
        expected = 400 if route.startswith("/api/v2") else status
        assert response.status_code == expected, (route, response.text)
        if route.startswith("/api/v1"):
            assert_problem(response, status)
    assert await counts(backend) == (0, 0)


async def test_chunked_json_body_over_the_limit_stops_while_streaming(small_client, backend):
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = b'{"type": "system.sleep", "payload": {"x": "'
        sent += len(head)
        yield head
        for _ in range(10_000):  # 640 MB if it were all read
            sent += PIECE
            yield b"a" * PIECE

    response = await small_client.post("/api/v1/jobs", content=body(),
                                       headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert sent < 100_000 + 4 * PIECE, sent
    assert await counts(backend) == (0, 0)


async def test_a_form_within_the_limits_still_converts(small_client, backend):
    body = Body([FORMAT, file_part(LIMIT - 10, filename=b"a.obj")])
    # the file is 'aaaa...': not a mesh, but it is stored and queued; the worker would fail it
    response = await small_client.post("/api/v1/conversions", content=body,
                                       headers=Body.headers)
    assert response.status_code == 201, response.text
    assert await counts(backend) == (1, 1)


# -- the pool ------------------------------------------------------------------------------


def upload(client: httpx.AsyncClient, i: int, gate: asyncio.Event | None = None):
    async def body() -> AsyncIterator[bytes]:
        yield (b"--B\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nglb\r\n"
               b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.obj\"\r\n"
               b"Content-Type: text/plain\r\n\r\n")
        if gate is not None:
            await gate.wait()  # a slow client: the rest of its body arrives later
        yield OBJ + f"# {i}\n".encode() + b"\r\n--B--\r\n"

    return client.post("/api/v1/conversions", content=body(), headers=Body.headers,
                       timeout=120)


async def test_uploads_never_take_the_whole_pool(database_url: str, backend: Backend):
    """The issue's starvation, reproduced: uploads whose writes are slow (here: blocked by a
    lock on the chunks table) held every pooled connection, and another client waited for
    the pool until it was told the database could not be reached."""
    small = await Backend.open(database_url, pool_size=4)
    settings = Settings(database_url=database_url, allowed_hosts=("jobq.test",), auth="off")
    transport = httpx.ASGITransport(app=create_app(settings, small))
    blocker = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://jobq.test") as client:
            # 1. bodies still arriving hold no connection at all
            gate = asyncio.Event()
            slow = [asyncio.create_task(upload(client, i, gate)) for i in range(8)]
            await asyncio.sleep(0.5)
            assert small.engine.pool.checkedout() == 0
            started = time.monotonic()
            assert (await client.get("/api/v1/jobs")).status_code == 200
            assert time.monotonic() - started < 5  # the pool waits 10 s before a 503

            # 2. writes that take long hold at most a quarter of the pool
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE file_chunks IN ACCESS EXCLUSIVE MODE")
            gate.set()
            await asyncio.sleep(1.0)  # every upload has its body and wants to write
            assert small.engine.pool.checkedout() <= 1
            started = time.monotonic()
            other = await client.get("/api/v1/jobs")
            assert other.status_code == 200, other.text
            assert time.monotonic() - started < 5  # the pool waits 10 s before a 503
            await transaction.rollback()

            answers = await asyncio.gather(*slow)
            assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
        assert (await counts(backend))[0] == 8
    finally:
        await blocker.close()
        await small.close()


# -- real HTTP -----------------------------------------------------------------------------


@pytest.fixture
def api(database_url: str, tmp_path):
    """`jobq serve` as a real process, with a 2 MB upload limit."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "JOBQ_MAX_UPLOAD_BYTES": str(LIMIT),
           "JOBQ_AUTH": "off"}
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port",
                                    str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_chunked_upload_over_http_is_refused_while_it_arrives(api, backend):
    """Transfer-Encoding: chunked on a real socket: the 413 arrives while the client is still
    sending, long before the 600 MB it would send, and the server's memory stays flat."""
    port, process = api
    rss_before = rss_kb(process.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    sent = 0
    try:
        sock.sendall(b"POST /api/v1/conversions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=B\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        head = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.obj\"\r\n"
                b"Content-Type: text/plain\r\n\r\n")
        answer = b""
        chunk = b"a" * PIECE
        frames = [head] + [chunk] * (600_000_000 // PIECE)
        for data in frames:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                answer = sock.recv(65536)
                break
            assert writable, "the server neither reads nor answers"
            sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
            sent += len(data)
        else:
            pytest.fail("the whole body was accepted")
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        answer = b"(connection closed)"
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    # what the server read, plus what the kernel's socket buffers took meanwhile (the
    # server's receive buffer grows to a few MB): far from the 600 MB
    assert sent < LIMIT + 1_000_000 + 16_000_000, sent
    assert rss_kb(process.pid) - rss_before < 100_000  # less than 100 MB more
    assert process.poll() is None


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_field_given_twice_is_422_not_last_one_wins(small_client, backend):
    body = Body([FORMAT, (b'Content-Disposition: form-data; name="format"', b"stl"),
                 file_part(len(OBJ), filename=b"a.obj")])
    response = await small_client.post("/api/v1/conversions", content=body, headers=Body.headers)
    problem = assert_problem(response, 422)
    assert problem["errors"] == [{"field": "format", "message": "given more than once"}]
    assert await counts(backend) == (0, 0)


async def test_a_file_part_may_name_any_charset(small_client, backend):
    body = Body([FORMAT, (b'Content-Disposition: form-data; name="file"; filename="a.obj"\r\n'
                          b"Content-Type: text/plain; charset=iso-8859-1", OBJ)])
    response = await small_client.post("/api/v1/conversions", content=body, headers=Body.headers)
    assert response.status_code == 201, response.text
