"""Errors the service reports on purpose; no HTTP status codes in here."""

from __future__ import annotations

from dataclasses import dataclass


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


class TooLarge(ServiceError):
    """A request body, or a part or field of it, is over its limit."""


class Malformed(ServiceError):
    """The request body cannot be read at all (not the format its Content-Type says)."""


class Conflict(ServiceError):
    """The action is not allowed in the current state of the thing."""


class InvalidTransition(Conflict):
    """A job cannot move from its current status to the requested one."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused with a different request body."""


class DatabaseUnavailable(ServiceError):
    """PostgreSQL cannot be reached right now; the caller may retry later."""


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


class JobTimeout(JobFailure):
    """The job ran longer than its timeout and was stopped; every job type reports it so.
    Retried like any failure unless the job type says otherwise (`retry_timeouts`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The job ran longer than its timeout of {seconds:g} s and was stopped.")
        self.seconds = seconds


class Unauthorized(ServiceError):
    """The request carries no valid credentials (an API key or a dashboard session)."""


class Forbidden(ServiceError):
    """The caller is known but may not do this; the message says what it may do instead."""


class TooManyRequests(ServiceError):
    """A per-key limit or quota is reached; `retry_after` seconds is when to try again."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after + 0.999))
