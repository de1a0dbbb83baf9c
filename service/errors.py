"""Errors the service reports on purpose; no HTTP status codes in here."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import sqlalchemy.exc


class ServiceError(Exception):
    """Base for errors the service reports on purpose."""


class NotFound(ServiceError):
    """No such thing exists."""


class JobNotFound(NotFound):
    """No job exists with this id."""

    def __init__(self, job_id: object) -> None:
        super().__init__(f"No job with id {job_id}.")


@dataclass
class FieldError:
    """One invalid field of a request, named by its dotted path."""

    field: str
    message: str


class InvalidRequest(ServiceError):
    """The request cannot be carried out as written; `fields` says which parts are wrong."""

    def __init__(self, detail: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.fields = fields or []


class UnknownJobType(InvalidRequest):
    """The job type is not declared."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"Unknown job type {name!r}. Known types: {', '.join(sorted(known))}.",
            [FieldError("type", f"must be one of {', '.join(sorted(known))}")],
        )


class FileTooLarge(ServiceError):
    """An upload is larger than the configured limit."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(
            f"The file {name!r} is larger than the limit of {limit:,} bytes; "
            "send a smaller file or ask the operator to raise JOBQ_MAX_UPLOAD_BYTES."
        )


class Conflict(ServiceError):
    """The action is not allowed in the current state of the thing."""


class InvalidTransition(Conflict):
    """A job cannot move from its current status to the requested one."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused with a different request body."""


class DatabaseUnavailable(ServiceError):
    """PostgreSQL cannot be reached right now; the caller may retry later."""


# -- what counts as "no database right now" ------------------------------------------------------
# The one list: everything that decides whether a database error means "retry later" (503 in the
# API, wait and retry in a worker) reads it through `is_connection_loss`.

CONNECTION_LOSS_TYPES: tuple[type[BaseException], ...] = (
    # Refused, reset, unreachable, no socket file, and every timeout (TimeoutError is an OSError:
    # asyncpg's connect timeout and command_timeout raise it).
    OSError,
    # asyncpg: "connection is closed", and the 08xxx class (connection does not exist, failure).
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # SQLAlchemy: no pooled connection free within pool_timeout (they are all stuck on a
    # database that does not answer); and the DBAPI's classes for lost connections.
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
"""Exception types that mean the connection could not be made or was lost."""

CONNECTION_LOSS_SQLSTATES: tuple[str, ...] = (
    "08",     # connection_exception (the whole class)
    "57P01",  # admin_shutdown: the server is stopping (fast or immediate shutdown)
    "57P02",  # crash_shutdown: another backend crashed, the server restarts
    "57P03",  # cannot_connect_now: starting up, shutting down, in recovery
    "53300",  # too_many_connections: no slot free right now; one frees when a client leaves
)
"""SQLSTATE codes (or classes) of server errors that mean "not now" rather than "not this":
checked on asyncpg's errors and on SQLAlchemy's wrappers of them, which carry the code too."""


def is_connection_loss(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached right now, looking through the
    wrappers around the driver's error: SQLAlchemy's DBAPIError (its `orig`, whose cause is
    asyncpg's error) and anything raised `from` a connection error (Procrastinate's
    ConnectorException)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (DatabaseUnavailable, *CONNECTION_LOSS_TYPES)):
            return True
        sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(CONNECTION_LOSS_SQLSTATES):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError):
            if error.connection_invalidated:
                return True
            pending.append(error.orig)
        # `raise ... from` (cause), or an error raised while handling one (context).
        pending.append(error.__cause__)
        if not error.__suppress_context__:
            pending.append(error.__context__)
    return False


class JobFailure(Exception):
    """Raised by job code to end an attempt with an error of its choosing."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class PermanentJobError(JobFailure):
    """The job can never succeed with this input: fail it now, do not retry."""

    retryable = False


class TransientJobError(JobFailure):
    """The job may succeed if tried again later."""

    retryable = True


class JobTimeout(PermanentJobError):
    """The job ran longer than its timeout and was stopped; every job type reports it so."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The job ran longer than its timeout of {seconds:g} s and was stopped.")
        self.seconds = seconds
