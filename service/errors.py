"""Every domain error the service raises, one class each.

The job store's errors (jobstore/errors.py: not found, store unavailable, corrupt
documents, ...) are the base of these and are re-exported here, so that an edge maps one
module: REST in `service/faces/rest/errors.py`, gRPC in `service/faces/grpc/errors.py`, Bedrock in
`service/faces/bedrock/errors.py`. Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

from jobstore.errors import (
    CorruptDocument,
    IllegalTransition,
    InvalidArgument,
    JobNotFound,
    StatusContention,
    StoreNotConformant,
    StoreUnavailable,
    TuneforgeError,
)

__all__ = [
    "AuthConfigurationError",
    "CorruptDocument",
    "DryRunFailed",
    "DryRunTimedOut",
    "DryRunUnavailable",
    "FailedPrecondition",
    "FileNotFound",
    "GrpcStartError",
    "IdempotencyConflict",
    "IllegalTransition",
    "InvalidArgument",
    "JobNotFound",
    "KeyNotFound",
    "LauncherFailed",
    "ModelNotFound",
    "NameConflict",
    "PermissionDenied",
    "StatusContention",
    "StoreNotConformant",
    "StoreUnavailable",
    "TooManyRequests",
    "TuneforgeError",
    "Unauthenticated",
]


class PermissionDenied(TuneforgeError):
    """The caller is known but may not do this: a URI outside the tenant's grants."""

    code = "PERMISSION_DENIED"


class IdempotencyConflict(TuneforgeError):
    """The clientRequestToken was used before with a different request body."""

    code = "IDEMPOTENCY_CONFLICT"


class FailedPrecondition(TuneforgeError):
    """The job is not in a state that allows the operation (e.g. stop a finished job)."""

    code = "FAILED_PRECONDITION"


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


class LauncherFailed(TuneforgeError):
    """A launcher's call raised: its cluster's API answered an error (Ray, Kubernetes),
    or the host refused (the local launcher). Says which call, for which job."""

    code = "INTERNAL"


class KeyNotFound(TuneforgeError):
    """No API key with this id (the admin routes)."""

    code = "NOT_FOUND"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id '{key_id}'", field="keyId")


class FileNotFound(TuneforgeError):
    """No uploaded file of the tenant's with this id."""

    code = "NOT_FOUND"

    def __init__(self, file_id: str, field: str = "file_id") -> None:
        super().__init__(f"no file with id '{file_id}'", field=field)


class ModelNotFound(TuneforgeError):
    """No usable custom model of the tenant's with this name."""

    code = "NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"no custom model named '{name}'", field="modelIdentifier")


class NameConflict(TuneforgeError):
    """A name is held: a custom model's name is taken, a custom model is the base model of
    a job that has not ended, or other requests keep claiming and releasing the name."""

    code = "CONFLICT"


class AuthConfigurationError(TuneforgeError):
    """Authentication is off but the service would listen beyond loopback."""

    code = "AUTH_CONFIGURATION"


class GrpcStartError(TuneforgeError):
    """The gRPC server could not listen on its address."""

    code = "GRPC_START"


class DryRunUnavailable(TuneforgeError):
    """A dry run (validateOnly) cannot run on this replica: the trainer's packages (torch,
    transformers, the `trainer` package) are not installed beside the server."""

    code = "UNIMPLEMENTED"


class DryRunTimedOut(TuneforgeError):
    """A dry run took longer than TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS: the data is too
    large to check within a request (a job checks it without that bound)."""

    code = "DRY_RUN_TIMEOUT"


class DryRunFailed(TuneforgeError):
    """The dry run's process crashed: a bug or the host, not the request (logged)."""

    code = "INTERNAL"
