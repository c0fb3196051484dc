"""The errors of the job store and the contract it shares with the trainer, one class each.

`TuneforgeError` is the base of every error a caller can be shown: a machine-readable
`code`, a `message` a user can act on, and the `field` at fault where there is one. The
service adds its own (service/errors.py); edges map both once to a status code. Nothing
here knows about HTTP or gRPC.
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


class StoreUnavailable(TuneforgeError):
    """The object store could not be reached or answered with a server error."""

    code = "UNAVAILABLE"


class StoreNotConformant(TuneforgeError):
    """The object store does not honour conditional writes; the service cannot run on it."""

    code = "STORE_NOT_CONFORMANT"


class IllegalTransition(Exception):
    """A state change the job state machine does not allow. A bug, never user input."""


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


class StatusContention(TuneforgeError, RuntimeError):
    """A compare-and-swap of a job's status lost to other writers every time it tried.
    (A RuntimeError too, as it was before it had a class of its own.)"""

    code = "INTERNAL"
