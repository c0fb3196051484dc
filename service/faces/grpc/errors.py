"""The one place where errors become gRPC statuses (the REST twin: service/faces/rest/errors.py).

| raised                                  | gRPC code           | rich details (google.rpc)   |
|-----------------------------------------|---------------------|-----------------------------|
| pydantic ValidationError (request)      | INVALID_ARGUMENT    | BadRequest: every field     |
| InvalidArgument                         | INVALID_ARGUMENT    | BadRequest: its field       |
| JobNotFound                             | NOT_FOUND           | ResourceInfo                |
| ModelNotFound, FileNotFound             | NOT_FOUND           | (ErrorInfo: its field)      |
| NameConflict                            | ALREADY_EXISTS      | (ErrorInfo only)            |
| FailedPrecondition                      | FAILED_PRECONDITION | PreconditionFailure         |
| IdempotencyConflict                     | ALREADY_EXISTS      | (ErrorInfo only)            |
| StoreUnavailable, StoreNotConformant    | UNAVAILABLE         | RetryInfo (5 s)             |
| Unauthenticated                         | UNAUTHENTICATED     | (ErrorInfo only)            |
| PermissionDenied                        | PERMISSION_DENIED   | (ErrorInfo: its field)      |
| TooManyRequests                         | RESOURCE_EXHAUSTED  | RetryInfo (when to retry)   |
| DryRunTimedOut (validate_only)          | DEADLINE_EXCEEDED   | (ErrorInfo only)            |
| DryRunUnavailable (validate_only)       | UNIMPLEMENTED       | (ErrorInfo only)            |
| ShuttingDown (a watch cut by shutdown)  | UNAVAILABLE         | RetryInfo (1 s)             |
| any other error                         | INTERNAL            | (logged here)               |

Every status also carries `google.rpc.ErrorInfo`: `reason` is the service's error code
(the REST body's `error.code`: INVALID_ARGUMENT, NOT_FOUND, IDEMPOTENCY_CONFLICT, ...)
and `metadata["field"]` the field at fault, named as REST names it.
"""

from __future__ import annotations

import logging
import math
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import ValidationError

from service.errors import (
    DryRunTimedOut,
    DryRunUnavailable,
    FailedPrecondition,
    FileNotFound,
    IdempotencyConflict,
    InvalidArgument,
    JobNotFound,
    ModelNotFound,
    NameConflict,
    PermissionDenied,
    StoreNotConformant,
    StoreUnavailable,
    TooManyRequests,
    TuneforgeError,
    Unauthenticated,
)

log = logging.getLogger(__name__)

DOMAIN = "tuneforge"
_RETRY_SECONDS = 5  # as REST's Retry-After

_CODES: list[tuple[type[TuneforgeError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (JobNotFound, code_pb2.NOT_FOUND),
    (ModelNotFound, code_pb2.NOT_FOUND),
    (FileNotFound, code_pb2.NOT_FOUND),
    (NameConflict, code_pb2.ALREADY_EXISTS),
    (IdempotencyConflict, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (StoreUnavailable, code_pb2.UNAVAILABLE),
    (StoreNotConformant, code_pb2.UNAVAILABLE),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (TooManyRequests, code_pb2.RESOURCE_EXHAUSTED),
    (DryRunTimedOut, code_pb2.DEADLINE_EXCEEDED),
    (DryRunUnavailable, code_pb2.UNIMPLEMENTED),
]


class ShuttingDown(Exception):
    """The server is stopping; a long call (a watch) ends so the client can go elsewhere."""


def validation_problems(error: ValidationError) -> list[tuple[str, str]]:
    """(field, message) for each problem, fields and messages as REST names them."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item.get("loc", ())) or "body"
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        problems.append((field, message))
    return problems or [("body", "invalid request")]


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _error_info(reason: str, field: str | None) -> any_pb2.Any:
    metadata = {"field": field} if field else {}
    return _packed(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))


def _bad_request(problems: list[tuple[str, str]]) -> any_pb2.Any:
    return _packed(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                for field, message in problems
            ]
        )
    )


def _retry_info(seconds: int) -> any_pb2.Any:
    return _packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))


def status_of(error: BaseException) -> status_pb2.Status:
    """The google.rpc.Status for an error raised while serving a call."""
    if isinstance(error, ValidationError):
        problems = validation_problems(error)
        summary = "; ".join(f"{field}: {message}" for field, message in problems[:10])
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=summary,
            details=[_error_info("INVALID_ARGUMENT", problems[0][0]), _bad_request(problems)],
        )
    if isinstance(error, ShuttingDown):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=str(error),
            details=[_error_info("SHUTTING_DOWN", None), _retry_info(1)],
        )
    if not isinstance(error, TuneforgeError):
        log.exception("unexpected error serving a gRPC call", exc_info=error)
        return status_pb2.Status(
            code=code_pb2.INTERNAL,
            message="internal error; the server logged it",
            details=[_error_info("INTERNAL", None)],
        )
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.INTERNAL)
    details = [_error_info(error.code, error.field)]
    if code == code_pb2.INVALID_ARGUMENT:
        details.append(_bad_request([(error.field or "body", error.message)]))
    elif isinstance(error, JobNotFound):
        details.append(
            _packed(
                error_details_pb2.ResourceInfo(
                    resource_type="tuneforge.v1.Job",
                    resource_name=error.job_id,
                    description=error.message,
                )
            )
        )
    elif code == code_pb2.FAILED_PRECONDITION:
        details.append(
            _packed(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type="JOB_STATE", subject="job", description=error.message
                        )
                    ]
                )
            )
        )
    elif code == code_pb2.UNAVAILABLE:
        details.append(_retry_info(_RETRY_SECONDS))
    elif isinstance(error, TooManyRequests):
        details.append(_retry_info(max(1, math.ceil(error.retry_after_seconds))))
    elif code == code_pb2.INTERNAL:
        log.error("unmapped error serving a gRPC call: %s: %s", error.code, error.message)
    return status_pb2.Status(code=code, message=error.message, details=details)


async def abort(context: grpc.aio.ServicerContext, error: BaseException) -> NoReturn:
    """End the call with the status for `error` (raises, as context.abort does)."""
    status = rpc_status.to_status(status_of(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover
