"""Errors the clients raise: one class per outcome, the same for gRPC and REST.

Every error has the gRPC status name as `code` (`NOT_FOUND`, ...), the service's
message, the request field at fault where there is one (`field`, a dotted JSON path
such as `hyperParameters.learningRate`), every problem found (`violations`, a list of
(field, description)), and the service's own error code (`reason`:
`IDEMPOTENCY_CONFLICT`, `FAILED_PRECONDITION`, ...).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ApiError(Exception):
    """The service answered with an error (or could not be reached)."""

    code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason
        self.violations = violations or []

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.code}: {self.message}{where}"


class InvalidArgument(ApiError):
    """A value is missing, malformed or out of range; `field` names it."""

    code = "INVALID_ARGUMENT"


class NotFound(ApiError):
    """No job with that id."""

    code = "NOT_FOUND"


class FailedPrecondition(ApiError):
    """The job's state does not allow the call (stopping a finished job)."""

    code = "FAILED_PRECONDITION"


class AlreadyExists(ApiError):
    """Idempotency conflict: the clientRequestToken was used with a different request."""

    code = "ALREADY_EXISTS"


class Unavailable(ApiError):
    """The service or its object store cannot be reached (or the server is stopping);
    safe to retry."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ApiError):
    """The call took longer than its deadline."""

    code = "DEADLINE_EXCEEDED"


class Unauthenticated(ApiError):
    """No valid API key: set TUNEFORGE_API_KEY (or pass --api-key / api_key=)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    """The key is valid but may not do this (a URI outside the tenant's grants)."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(ApiError):
    """A per-tenant limit (requests per second, queued jobs); retry later."""

    code = "RESOURCE_EXHAUSTED"


class Internal(ApiError):
    """A bug in the service (it logs it)."""

    code = "INTERNAL"


_BY_GRPC_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    # The client never cancels a call itself: a server that stops drops calls it had
    # not started with CANCELLED. The service is going away, as with UNAVAILABLE.
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_grpc(error: grpc.RpcError) -> ApiError:
    """The ApiError for a failed gRPC call, with the rich details the server sent."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    field = reason = None
    violations: list[tuple[str, str]] = []
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or None
            field = info.metadata.get("field") or field
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    if field is None and violations:
        field = violations[0][0]
    cls = _BY_GRPC_CODE.get(code)
    if cls is None:
        cls = type(f"{code.name.title().replace('_', '')}Error", (ApiError,), {"code": code.name})
    return cls(message, field=field, reason=reason or code.name, violations=violations)


def from_rest(status: int, body: Any) -> ApiError:
    """The ApiError for an HTTP error answer `{"error": {code, message, field, errors}}`."""
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {"message": f"HTTP {status}"}
    reason = str(detail.get("code") or f"HTTP_{status}")
    message = str(detail.get("message") or f"HTTP {status}")
    field = detail.get("field")
    violations = [
        (str(item.get("field", "")), str(item.get("message", "")))
        for item in detail.get("errors") or []
        if isinstance(item, dict)
    ]
    cls: type[ApiError]
    if status in (400, 413, 422):
        cls = InvalidArgument
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = AlreadyExists if reason == "IDEMPOTENCY_CONFLICT" else FailedPrecondition
    elif status in (502, 503, 504):
        cls = Unavailable
    elif status == 401:
        cls = Unauthenticated
    elif status == 403:
        cls = PermissionDenied
    elif status == 429:
        cls = ResourceExhausted
    else:
        cls = Internal
    return cls(message, field=field, reason=reason, violations=violations)
