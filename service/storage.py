"""Input and output files kept in PostgreSQL, streamed in chunks so memory stays bounded.

Behind a small interface (`FileStore`) so that a filesystem or object-store backend can follow:
callers never see chunks or tables.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from service import errors
from service.backend import Backend

CHUNK_SIZE = 1024 * 1024
"""Bytes per stored chunk: large enough to keep row overhead small, small enough to stream."""


@dataclass(frozen=True)
class FileInfo:
    """What is known about a stored file without reading it."""

    id: uuid.UUID
    name: str
    content_type: str
    size: int
    sha256: str


class FileStore(Protocol):
    """Where jobq keeps file bytes."""

    async def save(self, conn: asyncpg.Connection, chunks: AsyncIterable[bytes], name: str,
                   content_type: str, max_size: int | None = None) -> FileInfo: ...

    async def info(self, file_id: uuid.UUID) -> FileInfo: ...

    def read(self, file_id: uuid.UUID) -> AsyncIterator[bytes]: ...


async def rechunk(chunks: AsyncIterable[bytes], size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """The same bytes in pieces of exactly `size` (the last one shorter)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class PostgresFileStore:
    """Files as rows of `files` and `file_chunks`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def save(self, conn: asyncpg.Connection, chunks: AsyncIterable[bytes], name: str,
                   content_type: str, max_size: int | None = None) -> FileInfo:
        """Store a file on the caller's connection (and transaction); FileTooLarge past
        `max_size` bytes."""
        file_id = uuid.uuid4()
        digest = hashlib.sha256()
        size = 0
        await conn.execute(
            "INSERT INTO files (id, name, content_type, size, sha256) VALUES ($1, $2, $3, 0, '')",
            file_id, name, content_type,
        )
        seq = 0
        async for piece in rechunk(chunks):
            size += len(piece)
            if max_size is not None and size > max_size:
                raise errors.FileTooLarge(name, max_size)
            digest.update(piece)
            await conn.execute(
                "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)",
                file_id, seq, piece,
            )
            seq += 1
        sha256 = digest.hexdigest()
        await conn.execute(
            "UPDATE files SET size = $2, sha256 = $3 WHERE id = $1", file_id, size, sha256
        )
        return FileInfo(file_id, name, content_type, size, sha256)

    async def info(self, file_id: uuid.UUID) -> FileInfo:
        async with self.backend.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, name, content_type, size, sha256 FROM files WHERE id = $1", file_id
            )
        if row is None:
            raise errors.NotFound(f"No file with id {file_id}.")
        return FileInfo(**dict(row))

    async def read(self, file_id: uuid.UUID) -> AsyncIterator[bytes]:
        """The file's bytes, one chunk per round trip; no connection is held between chunks,
        so a slow reader never starves the pool."""
        seq = 0
        while True:
            async with self.backend.connection() as conn:
                data = await conn.fetchval(
                    "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2", file_id, seq
                )
            if data is None:
                return
            yield data
            seq += 1
