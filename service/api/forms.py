"""multipart/form-data read as it arrives, with every byte limit enforced while streaming
(issue 13): a body without `Content-Length` (chunked) is counted like any other, a file part
stops at the upload limit and an ordinary field at its own small limit, before the rest is
read. File parts are spooled (memory, then a temporary file); no database connection is taken
here, so a slow or large body never holds one (the write comes after, in service/conversions.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from litestar import Request
from litestar.datastructures import UploadFile
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from service import errors
from service.domain import limits

MAX_FIELD_BYTES = 64 * 1024
"""An ordinary (not file) field: options, format, job options. Far more than any needs."""
MAX_PARTS = 100
"""Parts in one form: a mesh with its sidecars and textures, and the fields."""
MAX_PART_HEADER_BYTES = 4096
"""One header line of a part (its name and filename are in it)."""
SPOOL_BYTES = 1024 * 1024
"""A file part is kept in memory up to this size, then in a temporary file."""
READ_SIZE = 1024 * 1024
"""Spooled files are read back in pieces of this size."""
CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


@dataclass
class FilePart:
    name: str
    filename: str
    content_type: str
    spool: UploadFile

    async def chunks(self) -> AsyncIterator[bytes]:
        await self.spool.seek(0)
        while chunk := await self.spool.read(READ_SIZE):
            yield chunk


@dataclass
class Form:
    """What a form held: the file parts in order and the other fields' text. Close it (or use
    `async with`) to remove the spooled files."""

    files: list[FilePart] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        for part in self.files:
            with contextlib.suppress(OSError):
                await part.spool.close()

    async def __aenter__(self) -> Form:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True)
class Limits:
    body_bytes: int
    """The whole body, every part's headers and framing included."""
    file_bytes: int
    """The file parts together."""
    file_field: str = "file"
    """The name of the parts that are files to keep; a file under any other name is noted
    (as a field saying so), never kept."""


def _refuse_nul(name: str, text: str) -> None:
    if limits.has_nul(text):
        name = name.replace("\x00", "") or "form"
        message = "must not contain NUL (%00) characters"
        raise errors.InvalidRequest(f"{name}: {message}.", [errors.FieldError(name, message)])


def _boundary(request: Request) -> bytes:
    media, options = request.content_type
    if media != "multipart/form-data":
        raise errors.Malformed(f"Send the form as multipart/form-data, not {media or 'nothing'}.")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise errors.Malformed("The Content-Type has no usable multipart boundary "
                            "(multipart/form-data; boundary=...).")
    return boundary.encode("latin-1")


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives, stopped with a 413 as soon as it passes `limit`, whatever
    the framing: `Content-Length` is checked first, then the bytes actually received."""
    announced = request.headers.get("content-length")
    if announced and announced.strip().isdigit() and int(announced) > limit:
        raise errors.TooLarge(f"The request body ({int(announced):,} bytes) is larger than "
                              f"the limit of {limit:,} bytes.")
    received = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise errors.Malformed("The client disconnected before the body was complete.")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise errors.TooLarge(f"The request body is larger than the limit of {limit:,} "
                                  "bytes; it was refused while it arrived.")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read_form(request: Request, bounds: Limits) -> Form:
    """Parse the body as it arrives. TooLarge (413) past any limit, Malformed (400)
    for a body that is not multipart, InvalidRequest (422) for a NUL in a name, a value or a
    part header, or text that is not UTF-8."""
    boundary = _boundary(request)
    form = Form()
    file_bytes = 0
    part: MultipartSegment | None = None
    spool: UploadFile | None = None
    text = bytearray()
    try:
        with PushMultipartParser(boundary, max_header_size=MAX_PART_HEADER_BYTES,
                                 max_segment_count=MAX_PARTS, strict=True) as parser:
            async for chunk in _body(request, bounds.body_bytes):
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        part = event
                        _check_headers(part)
                        if part.name == bounds.file_field:
                            spool = UploadFile(content_type=part.content_type or "",
                                               filename=part.filename or "",
                                               max_spool_size=SPOOL_BYTES)
                            form.files.append(FilePart(part.name, part.filename or "",
                                                       part.content_type
                                                       or "application/octet-stream", spool))
                        text.clear()
                    elif event and part is not None:
                        if spool is not None:
                            file_bytes += len(event)
                            if file_bytes > bounds.file_bytes:
                                raise errors.FileTooLarge(part.filename or part.name,
                                                          bounds.file_bytes)
                            await spool.write(event)
                        elif part.filename is None:
                            if len(text) + len(event) > MAX_FIELD_BYTES:
                                raise errors.TooLarge(
                                    f"The form field {part.name!r} is larger than "
                                    f"{MAX_FIELD_BYTES:,} bytes.")
                            text += event
                        # a file under another name: its bytes are counted, not kept
                    elif event is None and part is not None:
                        if spool is None:
                            if part.name in form.fields:  # never a silent "last one wins"
                                raise errors.InvalidRequest(
                                    f"{part.name}: given more than once; send it once.",
                                    [errors.FieldError(part.name, "given more than once")])
                            form.fields[part.name] = (
                                _text(part, bytes(text)) if part.filename is None
                                else f"(a file: {part.filename})")
                        part, spool = None, None
    except ParserLimitReached as exc:
        await form.close()
        raise errors.TooLarge(f"The form is over a limit ({exc}): at most {MAX_PARTS} parts, "
                              f"each header line at most {MAX_PART_HEADER_BYTES:,} bytes.") \
            from None
    except ParserError as exc:
        await form.close()
        raise errors.Malformed(f"The body is not valid multipart/form-data: {exc}.") from None
    except BaseException:
        await form.close()
        raise
    return form


def _check_headers(part: MultipartSegment) -> None:
    _refuse_nul(part.name, part.name)
    _refuse_nul(f"{part.name}.filename", part.filename or "")
    _refuse_nul(f"{part.name}.content_type", part.content_type or "")
    if part.filename is None and part.charset and part.charset.lower() not in CHARSETS:
        raise errors.InvalidRequest(
            f"{part.name}: send form fields as UTF-8, not {part.charset}.",
            [errors.FieldError(part.name, "not UTF-8")])


def _text(part: MultipartSegment, raw: bytes) -> str:
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest(f"{part.name}: is not valid UTF-8 text.",
                                    [errors.FieldError(part.name, "not valid UTF-8")]) from None
    _refuse_nul(part.name, value)
    return value
