"""Checks every request passes before its handler runs (issue 13): nothing PostgreSQL cannot
store (NUL) in the URL, the query or the headers; and the browser-origin checks (`Host`,
`Origin`, the body's content type). docs/security.md says why each is there."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import msgspec
from litestar import Request, Response
from litestar.status_codes import (
    HTTP_204_NO_CONTENT,
    HTTP_400_BAD_REQUEST,
    HTTP_403_FORBIDDEN,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
)
from litestar.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.api.errors import PROBLEM, problem, problem_body
from service.settings import Settings

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


def allowed_methods(request: Request) -> Response | None:
    """OPTIONS answered with every method of the path in `Allow`. Litestar 2.25's own answer
    names only the methods of the first handler registered on a path (its OPTIONS handler
    keeps the route object from before the others were merged in), so `Allow` contradicted
    the OpenAPI document (schemathesis, issue 13)."""
    if request.method != "OPTIONS":
        return None
    template = request.scope.get("path_template")
    methods = {method for route in request.app.routes if route.path_format == template
               for method in getattr(route, "methods", ())}
    if not methods:
        return None
    return Response(None, status_code=HTTP_204_NO_CONTENT,
                    headers={"Allow": ", ".join(sorted(methods | {"OPTIONS"}))})


async def before_request(request: Request) -> Response | None:
    """What runs before every handler: NUL refused, OPTIONS answered."""
    return await refuse_nul(request) or allowed_methods(request)


# -- browser origins -----------------------------------------------------------------------

UPLOAD_ROUTES = frozenset({"/api/v1/conversions", "/api/v2/convert"})
"""The routes that take multipart/form-data; every other body is JSON."""
UNCHECKED_HOSTS = frozenset({"/health", "/ready"})
"""Probes answer whatever name they are asked by (a load balancer's probe uses an address)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(netloc: str) -> str:
    """`Host` without its port, lower case; IPv6 keeps its brackets."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def origin_host(origin: str) -> str | None:
    """The host of an `Origin` header (`scheme://host[:port]`), or None if it names none."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return host_name(parts.netloc)


class HostPolicy:
    """Which host names the API answers to (JOBQ_ALLOWED_HOSTS plus the address it listens
    on) and which other sites' pages may call it (JOBQ_CORS_ORIGINS)."""

    def __init__(self, settings: Settings) -> None:
        bound = settings.host.lower()
        if ":" in bound and not bound.startswith("["):
            bound = f"[{bound}]"
        self.hosts = {*settings.allowed_hosts, bound}
        self.any_host = "*" in self.hosts
        self.cors_origins = {o.rstrip("/").lower() for o in settings.cors_origins}

    def allows_host(self, host: str) -> bool:
        if self.any_host or host in self.hosts:
            return True
        return any(h.startswith("*.") and host.endswith(h[1:]) for h in self.hosts)

    def allows_origin(self, origin: str) -> bool:
        if "*" in self.cors_origins or origin.rstrip("/").lower() in self.cors_origins:
            return True
        host = origin_host(origin)
        return host is not None and self.allows_host(host)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class BrowserGuard:
    """ASGI middleware in front of every route: a `Host` the API does not answer to is a 400
    (DNS rebinding), an `Origin` it does not trust a 403 (cross-site requests), and a body
    that is not JSON (or multipart on the upload routes) a 415, so that a page cannot post
    a form or `text/plain` that a browser sends without asking CORS first."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail, field = refusal
        body = msgspec.json.encode(problem_body(status, detail, [errors.FieldError(field, detail)]))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", PROBLEM.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        path = scope["path"]
        host = _header(scope, b"host")
        if path not in UNCHECKED_HOSTS and (host is None or
                                            not self.policy.allows_host(host_name(host))):
            return (HTTP_400_BAD_REQUEST,
                    f"This API does not answer to the host {host!r}; add it to "
                    "JOBQ_ALLOWED_HOSTS if it is this server's name.", "Host")
        origin = _header(scope, b"origin")
        if origin is not None and not self.policy.allows_origin(origin):
            return (HTTP_403_FORBIDDEN,
                    f"Requests from pages of {origin!r} are not allowed; add its host to "
                    "JOBQ_ALLOWED_HOSTS or the origin to JOBQ_CORS_ORIGINS.", "Origin")
        if scope["method"] in SAFE_METHODS:
            return None
        content_type = _header(scope, b"content-type")
        length = _header(scope, b"content-length")
        has_body = (_header(scope, b"transfer-encoding") is not None
                    or (length is not None and length.strip() not in ("", "0")))
        if content_type is None and not has_body:
            return None
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if path in UPLOAD_ROUTES:
            if media != "multipart/form-data":
                return (HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                        f"{path} takes multipart/form-data, not {media or 'an untyped body'}.",
                        "Content-Type")
        elif not (media == "application/json" or
                  (media.startswith("application/") and media.endswith("+json"))):
            return (HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    f"Send the body as application/json, not {media or 'an untyped body'}.",
                    "Content-Type")
        return None
