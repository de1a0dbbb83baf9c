"""Who may call which route (issue 13; docs/security.md).

Every route handler declares its rule in `opt` (`access.rule(...)`):

- `public`: anyone (/health, /ready, the dashboard's page and files, logging in);
- `submitter`: any key; a submitter sees only its own jobs, the handler scopes what it reads
  with `principal.scope`;
- `operator`: operators and admins (queues, workers, retry, delete, metrics);
- `admin`: admins only (keys, maintenance).

`guard` runs before every handler: it finds the caller (an `Authorization: Bearer` key, or
the dashboard's session cookie with its CSRF header on unsafe methods), refuses a route
without a rule (so a new route cannot be open by omission: a test enumerates them all), and
puts the caller in the request's state, where handlers get it as the `principal` dependency.
With authentication off every caller is `auth.OPEN`, with every right.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service import auth, errors

logger = logging.getLogger(__name__)

OPT = "access"
PUBLIC = "public"
RULES = (PUBLIC, *auth.ROLES)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def rule(level: str) -> dict[str, Any]:
    """The `opt` a route handler carries to say who may call it."""
    assert level in RULES, level
    return {OPT: level}


LITESTAR_PUBLIC = ("litestar._openapi.", "litestar.openapi.", "litestar.routes.http")
"""Handlers Litestar adds itself: the OpenAPI document and its viewer (documentation), and the
automatic answer to OPTIONS (the allowed methods; no data). Public."""


def rule_of(handler: BaseRouteHandler) -> str | None:
    """The handler's rule; None if it declares none (the guard then refuses it)."""
    level = handler.opt.get(OPT)
    if level is None and getattr(handler.fn, "__module__", "").startswith(LITESTAR_PUBLIC):
        return PUBLIC
    return level


def _bearer(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise errors.Unauthorized("Send the key as `Authorization: Bearer <key>`.")
    return value.strip()


async def identify(connection: ASGIConnection) -> auth.Principal | None:
    """The caller: by its key, else by its dashboard session; None if it sent neither."""
    if not connection.app.state.auth_required:
        return auth.OPEN
    backend = connection.app.state.backend
    secret = _bearer(connection)
    if secret is not None:
        return await auth.authenticate(backend, secret)
    token = connection.cookies.get(auth.SESSION_COOKIE)
    if token:
        principal = await auth.session(backend, token)
        if connection.scope["method"] not in SAFE_METHODS:
            sent = connection.headers.get(auth.CSRF_HEADER.lower(), "")
            if not hmac.compare_digest(sent.encode(), (principal.csrf_token or "").encode()):
                raise errors.Forbidden(
                    f"A dashboard session must send its CSRF token in {auth.CSRF_HEADER} "
                    "(GET /api/v1/session returns it).")
        return principal
    return None


async def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    level = rule_of(handler)
    if level is None:
        logger.error("route %s declares no access rule: refused", handler.paths)
        raise errors.Forbidden("This route declares no access rule, so nobody may call it.")
    if level == PUBLIC:  # no lookup: public routes do not ask who is calling
        connection.state.principal = None
        return
    principal = await identify(connection)
    if principal is None:
        raise errors.Unauthorized(
            "This route needs an API key: send `Authorization: Bearer <key>` "
            "(an admin creates keys with `jobq keys create`).")
    if not principal.has(level):
        raise errors.Forbidden(
            f"This route needs the {level} role; this key ({principal.name}) is a "
            f"{principal.role}.")
    connection.state.principal = principal


def provide_principal(request: Request) -> auth.Principal:
    """The caller the guard found (routes with a rule other than public always have one)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise errors.Unauthorized("This request carries no API key or session.")
    return principal
