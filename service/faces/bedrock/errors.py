"""The one place where errors become Bedrock error responses.

botocore's rest-json parser reads the error code from the `x-amzn-ErrorType` header and
the message from the JSON body's `message`, so callers catch
`client.exceptions.ValidationException` and friends exactly as against AWS. Status codes
are the service model's (`botocore/data/bedrock/2023-04-20`); a test checks them.

An unreachable store is `ServiceUnavailableException` (503, with `Retry-After`): a shape
of the same service model, and one botocore's retry modes retry on their own, where an
`InternalServerException` (500) would say the service is broken.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.errors import (
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


class BedrockError(Exception):
    error_type: ClassVar[str] = "InternalServerException"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(BedrockError):
    error_type = "ValidationException"
    status = 400


class ConflictException(BedrockError):
    error_type = "ConflictException"
    status = 400


class ResourceNotFoundException(BedrockError):
    error_type = "ResourceNotFoundException"
    status = 404


class AccessDeniedException(BedrockError):
    error_type = "AccessDeniedException"
    status = 403


class ThrottlingException(BedrockError):
    error_type = "ThrottlingException"
    status = 429


class InternalServerException(BedrockError):
    error_type = "InternalServerException"
    status = 500


class ServiceUnavailableException(BedrockError):
    error_type = "ServiceUnavailableException"
    status = 503
    retry_after_seconds = 5


ERROR_CLASSES: tuple[type[BedrockError], ...] = (
    ValidationException,
    ConflictException,
    ResourceNotFoundException,
    AccessDeniedException,
    ThrottlingException,
    InternalServerException,
    ServiceUnavailableException,
)


def validation_message(errors: list[Any], prefix: str = "") -> str:
    """pydantic / FastAPI errors as one line naming each field at fault."""
    parts = []
    for item in errors[:10]:
        location = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join([prefix, *location] if prefix else location) or "body"
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "extra_forbidden":
            message = "is not a field of this operation"
        elif item.get("type") == "json_invalid":
            field, message = "body", "the request body is not valid JSON"
        parts.append(f"{field}: {message}")
    return "; ".join(parts) or "invalid request"


def to_bedrock(error: Exception) -> BedrockError:
    if isinstance(error, BedrockError):
        return error
    if isinstance(error, RequestValidationError):
        return ValidationException(validation_message(list(error.errors())))
    if isinstance(error, InvalidArgument):
        return ValidationException(error.message)
    if isinstance(error, (Unauthenticated, PermissionDenied)):
        return AccessDeniedException(error.message)
    if isinstance(error, TooManyRequests):
        return ThrottlingException(error.message)
    if isinstance(error, (JobNotFound, ModelNotFound, FileNotFound)):
        return ResourceNotFoundException(error.message)
    if isinstance(error, (IdempotencyConflict, FailedPrecondition, NameConflict)):
        return ConflictException(error.message)
    if isinstance(error, (StoreUnavailable, StoreNotConformant)):
        return ServiceUnavailableException(f"{error.message}; retry the request")
    if isinstance(error, TuneforgeError):
        log.error("unmapped domain error on the Bedrock face: %s", error.message)
        return InternalServerException(error.message)
    log.error("unexpected error on the Bedrock face", exc_info=error)
    return InternalServerException("an internal error occurred; retry the request")


def error_response(error: BedrockError) -> JSONResponse:
    headers = {"x-amzn-ErrorType": error.error_type}
    if isinstance(error, ServiceUnavailableException):
        headers["Retry-After"] = str(error.retry_after_seconds)
    return JSONResponse({"message": error.message}, status_code=error.status, headers=headers)


Authenticate = Callable[[Request], Coroutine[Any, Any, None]]


def bedrock_route_class(authenticate: Authenticate) -> type[APIRoute]:
    """A route class that authenticates first and answers every error Bedrock's way.

    Scoped to the Bedrock router: the native /v1 routes keep their own error format.
    """

    class BedrockRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            original = super().get_route_handler()

            async def handler(request: Request) -> Response:
                request_id = str(uuid.uuid4())
                try:
                    await authenticate(request)
                    response = await original(request)
                except Exception as error:  # every error leaves in Bedrock's shape
                    response = error_response(to_bedrock(error))
                response.headers["x-amzn-RequestId"] = request_id
                return response

            return handler

    return BedrockRoute
