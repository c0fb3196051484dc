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


class PermissionDenied(TuneforgeError):
    """The caller is known but may not do this: a URI outside the tenant's grants."""

    code = "PERMISSION_DENIED"


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


class CorruptDocument(TuneforgeError):
    """A document in the store that is not JSON, or not the shape it must have (written
    by hand, by an older or newer release, or damaged). The service's fault, not the
    caller's: it names the object so that an operator can look at it."""

    code = "INTERNAL"

    def __init__(self, uri: str, detail: str, *, is_json: bool) -> None:
        super().__init__(f"{uri} could not be read: {detail}")
        self.uri = uri
        # JSON, but not the shape this release expects: perhaps another release's
        # (a rolling upgrade), so never replaced or given up on by this one.
        self.is_json = is_json


class LauncherFailed(TuneforgeError):
    """A launcher's call raised: its cluster's API answered an error (Ray, Kubernetes),
    or the host refused (the local launcher). Says which call, for which job."""

    code = "INTERNAL"


class StatusContention(TuneforgeError, RuntimeError):
    """A compare-and-swap of a job's status lost to other writers every time it tried.
    (A RuntimeError too, as it was before it had a class of its own.)"""

    code = "INTERNAL"
