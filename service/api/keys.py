"""API keys over REST (`/api/v1/keys`, admins only) and the dashboard's session
(`/api/v1/session`): log in with a key, get a cookie and a CSRF token, log out."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service import auth
from service.api import access, schemas
from service.api.openapi import answers
from service.backend import Backend


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A key's limits; a missing or null field: no limit."""

    submissions_per_second: float | None = None
    max_queued: int | None = None
    upload_bytes_per_day: int | None = None
    max_timeout_seconds: float | None = None
    max_concurrent_uploads: int | None = None


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A new key: its name (for people), its role, the queues and job types it may submit to
    (null: any) and its limits."""

    name: str
    role: str = "submitter"
    queues: list[str] | None = None
    types: list[str] | None = None
    limits: Limits | None = None


class Login(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    key: str


@get(f"{schemas.API}/keys", tags=["keys"], summary="API keys (never the keys themselves)",
     responses=answers(dict[str, Any], 422), opt=access.rule("admin"))
async def list_keys(backend: NamedDependency[Backend],
                    revoked: FromQuery[bool] = False) -> dict[str, Any]:
    async with backend.connection() as conn:
        return {"items": await auth.list_keys(conn, revoked)}


@post(f"{schemas.API}/keys", status_code=HTTP_201_CREATED, tags=["keys"],
      summary="Create an API key: the answer holds the key, shown this once only",
      dto=schemas.StrictJSON[KeyRequest], return_dto=None,
      responses=answers(dict[str, Any], 409, 413, 422, status=201), opt=access.rule("admin"))
async def create_key(backend: NamedDependency[Backend],
                     data: JSONBody[KeyRequest]) -> dict[str, Any]:
    limits = auth.KeyLimits(**msgspec.structs.asdict(data.limits)) if data.limits else None
    async with backend.connection() as conn:
        row, secret = await auth.create_key(conn, data.name, data.role, data.queues, data.types,
                                            limits)
    return {**row, "key": secret}


@delete(f"{schemas.API}/keys/{{ref:str}}", status_code=HTTP_200_OK, tags=["keys"],
        summary="Revoke an API key (by id, shown prefix or name); its dashboard sessions end",
        responses=answers(dict[str, Any], 404), opt=access.rule("admin"))
async def revoke_key(backend: NamedDependency[Backend], ref: FromPath[str]) -> dict[str, Any]:
    async with backend.connection() as conn:
        return await auth.revoke_key(conn, ref)


@post(f"{schemas.API}/session", status_code=HTTP_200_OK, tags=["keys"],
      summary="Log the dashboard in with a key: sets an HttpOnly session cookie and returns "
      "the CSRF token to send as X-CSRF-Token", dto=schemas.StrictJSON[Login], return_dto=None,
      responses=answers(dict[str, Any], 413, 422), opt=access.rule("public"))
async def log_in(request: Request, backend: NamedDependency[Backend],
                 data: JSONBody[Login]) -> Response[dict[str, Any]]:
    if not request.app.state.auth_required:
        return Response({**auth.OPEN.describe(), "csrf_token": None})
    principal = await auth.authenticate(backend, data.key)
    token, csrf = await auth.open_session(backend, principal)
    cookie = Cookie(key=auth.SESSION_COOKIE, value=token, path="/", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https",
                    max_age=int(auth.SESSION_LIFETIME.total_seconds()))
    return Response({**principal.describe(), "csrf_token": csrf}, cookies=[cookie])


@get(f"{schemas.API}/session", tags=["keys"],
     summary="Who is calling: the key's name, role, queues, types and limits (and the CSRF "
     "token of a dashboard session)", responses=answers(dict[str, Any]),
     opt=access.rule("submitter"))
async def who(principal: NamedDependency[auth.Principal]) -> dict[str, Any]:
    return {**principal.describe(), "csrf_token": principal.csrf_token}


@delete(f"{schemas.API}/session", status_code=HTTP_200_OK, tags=["keys"],
        summary="Log the dashboard out: ends the session", responses=answers(dict[str, str]),
        opt=access.rule("submitter"))
async def log_out(request: Request, backend: NamedDependency[Backend]) -> Response[dict[str, str]]:
    token = request.cookies.get(auth.SESSION_COOKIE)
    if token:
        await auth.close_session(backend, token)
    return Response({"status": "logged out"},
                    cookies=[Cookie(key=auth.SESSION_COOKIE, value="", path="/", httponly=True,
                                    samesite="strict", max_age=0)])


ROUTES = [list_keys, create_key, revoke_key, log_in, who, log_out]
