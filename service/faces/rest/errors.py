"""The one place where domain errors become HTTP responses.

Body shape, always: `{"error": {"code", "message", "field"?, "errors"?}}`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.schemas import ErrorResponse
from service.errors import (
    DryRunTimedOut,
    DryRunUnavailable,
    FailedPrecondition,
    FileNotFound,
    IdempotencyConflict,
    InvalidArgument,
    JobNotFound,
    KeyNotFound,
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

_STATUS = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    JobNotFound: 404,
    KeyNotFound: 404,
    ModelNotFound: 404,
    FileNotFound: 404,
    TooManyRequests: 429,
    IdempotencyConflict: 409,
    FailedPrecondition: 409,
    NameConflict: 409,
    StoreUnavailable: 503,
    StoreNotConformant: 503,
    DryRunTimedOut: 422,
    DryRunUnavailable: 501,
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Bad request: a value is invalid (the field is named).",
        404: "No such job.",
        409: "Conflict: the job's state does not allow it, or an idempotency token was reused.",
        401: "No valid API key (send Authorization: Bearer <key>).",
        403: "Not allowed: a URI outside the buckets or folders granted to the tenant.",
        413: "Request body too large.",
        422: "The request body does not match the schema (the field is named).",
        429: "A limit (a tenant's requests per second or queued jobs, open job streams); "
        "retry after Retry-After.",
        503: "The object store is unavailable; retry after the Retry-After seconds.",
    }.items()
}


def error_body(
    code: str, message: str, field: str | None = None, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    if errors:
        detail["errors"] = errors
    return {"error": detail}


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, TuneforgeError)
    status = next((s for cls, s in _STATUS.items() if isinstance(error, cls)), 500)
    headers = {"Retry-After": "5"} if status == 503 else None
    if isinstance(error, TooManyRequests):
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_seconds)))}
    elif isinstance(error, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    if status == 500:
        log.error("unmapped error on %s: %s", request.url.path, error.message)
    return JSONResponse(
        error_body(error.code, error.message, error.field), status_code=status, headers=headers
    )


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors():
        field = _field_name(tuple(item.get("loc", ())))
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "extra_forbidden":
            message = "unknown field"
        elif item.get("type") == "json_invalid":
            field, message = "body", "the request body is not valid JSON"
        problems.append({"field": field, "message": message})
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:10])
    return JSONResponse(
        error_body("INVALID_ARGUMENT", summary, first["field"], problems), status_code=422
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(
        error.status_code, "HTTP_ERROR"
    )
    return JSONResponse(
        error_body(code, str(error.detail)), status_code=error.status_code, headers=error.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TuneforgeError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
