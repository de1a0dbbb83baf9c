"""The one place that maps errors to HTTP: every 4xx/5xx is application/problem+json."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from service import errors

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
RETRY_AFTER_SECONDS = 2

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int,
    detail: str,
    fields: list[errors.FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    return Response(problem_body(status, detail, fields), status_code=status, media_type=PROBLEM,
                    headers=headers)


def problem_body(
    status: int, detail: str, fields: list[errors.FieldError] | None = None
) -> dict[str, Any]:
    """The RFC 9457 body every error answer carries."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if fields:
        body["errors"] = [{"field": f.field, "message": f.message} for f in fields]
    return body


def _service_error(_: Request, exc: errors.ServiceError) -> Response:
    if isinstance(exc, errors.NotFound):
        return problem(HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, errors.Unauthorized):
        return problem(HTTP_401_UNAUTHORIZED, str(exc),
                       headers={"WWW-Authenticate": 'Bearer realm="jobq"'})
    if isinstance(exc, errors.Forbidden):
        return problem(HTTP_403_FORBIDDEN, str(exc))
    if isinstance(exc, errors.TooManyRequests):
        return problem(HTTP_429_TOO_MANY_REQUESTS, str(exc),
                       headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, errors.InvalidRequest):
        return problem(HTTP_422_UNPROCESSABLE_ENTITY, str(exc), exc.fields)
    if isinstance(exc, errors.FileTooLarge | errors.TooLarge):
        return problem(HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(exc))
    if isinstance(exc, errors.Malformed):
        return problem(HTTP_400_BAD_REQUEST, str(exc))
    if isinstance(exc, errors.Conflict):
        return problem(HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, errors.DatabaseUnavailable):
        logger.warning("database unavailable: %s", exc)
        return problem(
            HTTP_503_SERVICE_UNAVAILABLE,
            "The database cannot be reached right now; retry shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    logger.exception("unmapped service error")
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "An unexpected error occurred.")


# Litestar reports body validation as: "Expected `int`, got `str` - at `$.priority`".
_AT = re.compile(r"^(?P<message>.*?) - at `\$\.?(?P<path>[^`]*)`$")


def _validation_fields(exc: ValidationException) -> list[errors.FieldError]:
    fields = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        message = str(item.get("message", "")) if isinstance(item, dict) else str(item)
        key = item.get("key") if isinstance(item, dict) else None
        match = _AT.match(message)
        if match:
            message, key = match["message"], match["path"] or key
        # Litestar names the whole body "data".
        field = "body" if key in (None, "", "data") else str(key)
        fields.append(errors.FieldError(field, message))
    return fields


def _http_error(_: Request, exc: HTTPException) -> Response:
    if isinstance(exc, ValidationException):
        fields = _validation_fields(exc)
        if not fields:
            # No field to blame: the body did not parse at all.
            return problem(
                HTTP_400_BAD_REQUEST,
                f"The request body is not valid JSON ({exc.detail}); send a JSON object.",
            )
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        return problem(HTTP_422_UNPROCESSABLE_ENTITY, f"Invalid request: {detail}.", fields)
    if type(exc) is ClientException and exc.status_code == HTTP_400_BAD_REQUEST:
        # Litestar's word for a body its JSON decoder could not read.
        return problem(
            HTTP_400_BAD_REQUEST,
            f"The request body is not valid JSON ({exc.detail}); send a JSON object.",
        )
    if isinstance(exc, NotFoundException):
        return problem(HTTP_404_NOT_FOUND, str(exc.detail) or "No such resource.")
    headers = dict(exc.headers or {})
    return problem(exc.status_code, str(exc.detail), headers=headers or None)


async def html_errors_as_problems(response: Response) -> Response:
    """An error page a framework route answers itself (Litestar's OpenAPI router answers an
    unknown `/schema/...` path with an HTML 404) as problem+json, like every other error."""
    status = getattr(response, "status_code", None)  # None: a file or stream to send as it is
    media = getattr(response, "media_type", None)
    media = getattr(media, "value", media)  # an enum or a str
    if isinstance(status, int) and status >= 400 and str(media).startswith("text/html"):
        return problem(status, "No such resource." if status == 404
                       else _TITLES.get(status, "Error") + ".")
    return response


def _unexpected(_: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "An unexpected error occurred.")


EXCEPTION_HANDLERS = {
    errors.ServiceError: _service_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}

