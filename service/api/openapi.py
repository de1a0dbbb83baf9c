"""The OpenAPI document (`/schema`): every answer an operation can give, success and error.

Each route declares what is particular to it with `responses=answers(...)` (its body's shape,
the errors its handler raises). What any route may answer, whatever it does, is declared once,
here, and `finish` adds it to every operation of the document:

- `EVERY_OPERATION`: the checks in front of every route (service/api/guards.py);
- `WITH_BODY`: the content-type check of every POST, PUT, PATCH and DELETE;
- `DATABASE`: 503 on every route that reads the database;
- `GUARDED`: answers of every operation except the open ones (`OPEN`). Authentication declares
  its 401, 403 and 429 here, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
)
from litestar.routes import HTTPRoute

from service.api import shapes
from service.api.errors import PROBLEM

MEANING = {
    400: "The request cannot be read: a body that is not valid JSON or multipart, a `Host` "
         "this API does not answer to (JOBQ_ALLOWED_HOSTS), or a NUL character in a header.",
    401: "No valid credentials.",
    403: "Not allowed: an `Origin` (a page of another site) this API does not trust.",
    404: "No such thing (a malformed id names nothing either).",
    409: "Not allowed in the current state (the detail says why).",
    413: "The body, a file or a form field is larger than its limit.",
    415: "The body is not JSON (multipart/form-data on the upload routes).",
    422: "A field, parameter or value is invalid; `errors` names each one to fix.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "The database cannot be reached right now; retry after `Retry-After` seconds.",
}
"""What each error status means, in every operation that may answer it."""

EVERY_OPERATION = (400, 403, 422)
"""Refused in front of every route: `Host`, `Origin`, NUL in the path, query or headers."""
WITH_BODY = (415,)
"""Refused in front of every POST, PUT, PATCH and DELETE: a body that is not JSON."""
DATABASE = (503,)
NO_DATABASE = frozenset({"/health", "/api/v1/formats", "/api/v1/job-types"})
"""Operations that never touch the database; every other one may answer `DATABASE`."""
GUARDED: dict[int, str] = {
    401: "No API key, or one that is unknown or revoked (docs/security.md)",
    403: "The key's role, queues or types do not allow this",
    429: "A per-key limit: wait for Retry-After seconds",
}
"""Answers of every operation but the `OPEN` ones (status: meaning); authentication adds its
401, 403 and 429 here."""
OPEN = frozenset({"/health", "/ready"})

UNSAFE = ("post", "put", "patch", "delete")


def _problem(status: int) -> ResponseSpec:
    return ResponseSpec(data_container=shapes.Problem, media_type=PROBLEM,
                        description=MEANING[status], generate_examples=False)


def answers(ok: Any = None, *errors: int, status: int = 200, also: dict[int, Any] | None = None,
            description: str = "OK", media_type: str = "application/json",
            v2: bool = False) -> dict[int, ResponseSpec]:
    """A route's own answers: `ok`, the shape of its success body (status `status`; `also`
    more success statuses and their shapes), and the error statuses its handler raises.
    Errors are problem+json; on /api/v2 (`v2`), that service's `{"error": ...}`."""
    specs: dict[int, ResponseSpec] = {}
    if ok is not None:
        specs[status] = ResponseSpec(data_container=ok, description=description,
                                     media_type=media_type, generate_examples=False)
    for code, shape in (also or {}).items():
        specs[code] = ResponseSpec(data_container=shape, description=description,
                                   generate_examples=False)
    # 400 always: it replaces Litestar's own description of its validation errors.
    for code in sorted({400, *errors}):
        specs[code] = (ResponseSpec(data_container=shapes.V2Error, description=MEANING[code],
                                    generate_examples=False) if v2 else _problem(code))
    return specs


def finish(app: Litestar) -> None:
    """Add what every operation may answer (see the module's doc) to the document, and what a
    route declared in its `opt`: the media types of a status beyond the first
    (`{"media": {status: [types]}}`), a multipart body (`{"form": JSON Schema}`).
    Run at start-up (`on_startup`); running it again changes nothing."""
    document = app.openapi_schema
    components = document.components
    assert isinstance(components, Components)
    schemas = components.schemas if components.schemas is not None else {}
    # Problem is in the components: every route's answers() declares a 400 with it.
    assert "Problem" in schemas
    problem_ref = Reference(ref="#/components/schemas/Problem")
    declared = _declared(app)
    for path, item in (document.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if not isinstance(operation, Operation):
                continue
            codes: dict[int, str] = {c: MEANING[c] for c in EVERY_OPERATION}
            if method in UNSAFE:
                codes.update((c, MEANING[c]) for c in WITH_BODY)
            if path not in NO_DATABASE:
                codes.update((c, MEANING[c]) for c in DATABASE)
            if path not in OPEN:
                codes.update(GUARDED)
            responses = operation.responses if operation.responses is not None else {}
            for code, meaning in codes.items():
                response = responses.get(str(code))
                if not isinstance(response, OpenAPIResponse):
                    response = responses[str(code)] = OpenAPIResponse(description=meaning)
                content = response.content if response.content is not None else {}
                content.setdefault(PROBLEM, OpenAPIMediaType(schema=problem_ref))
                response.content = content
            opt = declared.get((path, method), {})
            if "form" in opt:
                operation.request_body = RequestBody(
                    content={"multipart/form-data": OpenAPIMediaType(schema=opt["form"])},
                    required=True)
            for code, types in opt.get("media", {}).items():
                response = responses[str(code)]
                assert isinstance(response, OpenAPIResponse) and response.content
                first = next(iter(response.content.values()))
                for media in types:
                    response.content.setdefault(media, OpenAPIMediaType(schema=first.schema))
            operation.responses = responses


def _declared(app: Litestar) -> dict[tuple[str, str], dict[str, Any]]:
    """Each operation's `opt` (path, method): where routes declare what `responses` cannot
    say (`media`: more media types of a status; `form`: a multipart body's JSON Schema)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    found[(route.path_format, method.lower())] = handler.opt
    return found

