"""Checks every request passes before its handler runs: nothing PostgreSQL cannot store (NUL)
in the URL, the query or the headers (issue 13)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from litestar import Request, Response
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_422_UNPROCESSABLE_ENTITY

from service import errors
from service.api.errors import problem

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL (%00) characters"


def _refused(status: int, field: str) -> Response:
    return problem(status, f"{field}: {NUL_MESSAGE}.", [errors.FieldError(field, NUL_MESSAGE)])


async def refuse_nul(request: Request) -> Response | None:
    """A 4xx naming the first URL part, query parameter or header that holds a NUL."""
    if NUL in request.scope["path"]:
        return _refused(HTTP_422_UNPROCESSABLE_ENTITY, "path")
    query = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if NUL in key or NUL in value:
            return _refused(HTTP_422_UNPROCESSABLE_ENTITY, key.replace(NUL, "") or "query")
    for name, value in request.scope["headers"]:
        if b"\x00" in value:
            return _refused(HTTP_400_BAD_REQUEST, name.decode("latin-1"))
    return None
