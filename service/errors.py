"""Every domain error the core raises, one class each.

Edges map these once (REST: `service/api/errors.py`) to a status code and a JSON body
with a machine-readable `code`, a `message` a user can act on, and the `field` at fault
where there is one. Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(TuneforgeError):
    """The request is malformed or a value is out of range."""

    code = "INVALID_ARGUMENT"


class JobNotFound(TuneforgeError):
    code = "NOT_FOUND"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id '{job_id}'", field="jobId")
        self.job_id = job_id


class IdempotencyConflict(TuneforgeError):
    """The clientRequestToken was used before with a different request body."""

    code = "IDEMPOTENCY_CONFLICT"


class FailedPrecondition(TuneforgeError):
    """The job is not in a state that allows the operation (e.g. stop a finished job)."""

    code = "FAILED_PRECONDITION"


class StoreUnavailable(TuneforgeError):
    """The object store could not be reached or answered with a server error."""

    code = "UNAVAILABLE"


class StoreNotConformant(TuneforgeError):
    """The object store does not honour conditional writes; the service cannot run on it."""

    code = "STORE_NOT_CONFORMANT"


class IllegalTransition(Exception):
    """A state change the job state machine does not allow. A bug, never user input."""


class Unauthenticated(TuneforgeError):
    """No API key, or one that is unknown, malformed or revoked."""

    code = "UNAUTHENTICATED"


class TooManyRequests(TuneforgeError):
    """A per-tenant limit is reached: requests per second, or jobs waiting in the queue.

    `retry_after_seconds` is when trying again may succeed (edges send it as a hint).
    """

    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, retry_after_seconds: float, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_seconds = retry_after_seconds
