"""The one place where errors become OpenAI's error answers.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": "..."}}

with the status codes the `openai` SDK turns into its exception classes:

| raised                                          | status | SDK exception          |
|-------------------------------------------------|--------|------------------------|
| request validation, InvalidArgument             | 400    | BadRequestError        |
| Unauthenticated                                 | 401    | AuthenticationError    |
| PermissionDenied                                | 403    | PermissionDeniedError  |
| JobNotFound, FileNotFound, ModelNotFound        | 404    | NotFoundError          |
| FailedPrecondition, IdempotencyConflict,        | 409    | ConflictError          |
| NameConflict                                    |        |                        |
| (a body over the size limit)                    | 413    | APIStatusError         |
| TooManyRequests (with Retry-After)              | 429    | RateLimitError         |
| StoreUnavailable, StoreNotConformant            | 503    | InternalServerError    |
| FastAPI's own 4xx (a body that is not UTF-8)    | 4xx    | by its status          |
| anything else (logged here)                     | 500    | InternalServerError    |

`param` names the field at fault in OpenAI's names (`training_file`,
`hyperparameters.n_epochs`), also when the core named its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException

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
from service.faces.openai.schemas import ErrorResponse

log = logging.getLogger(__name__)

# What the OpenAPI document says each route may answer besides its own 200.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Bad request: a value is invalid (`param` names it).",
        401: "No valid API key (send Authorization: Bearer <key>).",
        403: "Not allowed: another tenant's resource, a base model to delete, a URI outside "
        "the tenant's grants.",
        404: "No such job, file or model (of the caller's tenant).",
        409: "Conflict: the job's state does not allow it, or a name or token was reused.",
        413: "The upload is over the service's size limit.",
        429: "A per-tenant limit (requests per second, queued jobs); retry after Retry-After.",
        503: "The object store is unavailable; retry after the Retry-After seconds.",
    }.items()
}

_RETRY_SECONDS = 5
# The core's field names -> OpenAI's, for a create made here.
NATIVE_PARAMS = {
    "jobName": "suffix",
    "baseModelIdentifier": "model",
    "trainingDataConfig.s3Uri": "training_file",
    "trainingDataConfig": "training_file",
    "validationDataConfig.s3Uri": "validation_file",
    "validationDataConfig": "validation_file",
    "tags": "metadata",
    "hyperParameters.epochCount": "hyperparameters.n_epochs",
    "hyperParameters.batchSize": "hyperparameters.batch_size",
    "hyperParameters.learningRate": "hyperparameters.learning_rate_multiplier",
    "hyperParameters.seed": "seed",
    "hyperParameters.dpoBeta": "method.dpo.hyperparameters.beta",
}
_STATUS: list[tuple[type[TuneforgeError], int, str]] = [
    (InvalidArgument, 400, "invalid_request_error"),
    (Unauthenticated, 401, "invalid_request_error"),
    (PermissionDenied, 403, "permission_error"),
    (JobNotFound, 404, "invalid_request_error"),
    (FileNotFound, 404, "invalid_request_error"),
    (ModelNotFound, 404, "invalid_request_error"),
    (FailedPrecondition, 409, "invalid_request_error"),
    (IdempotencyConflict, 409, "invalid_request_error"),
    (NameConflict, 409, "invalid_request_error"),
    (TooManyRequests, 429, "rate_limit_error"),
    (StoreUnavailable, 503, "server_error"),
    (StoreNotConformant, 503, "server_error"),
]


def error_body(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _param(field: str | None) -> str | None:
    if field is None:
        return None
    return NATIVE_PARAMS.get(field, NATIVE_PARAMS.get(field.split(".")[0], field))


_TYPE_TAGS = {"int", "float", "str", "bool", "dict", "list", "none"}


def _field_name(location: tuple[Any, ...]) -> str:
    """The field a pydantic location names: without the body/query marker and without the
    union members pydantic adds (`literal['auto']`, `constrained-int`, `int`)."""
    parts = [
        str(part)
        for part in location
        if part not in ("body", "query", "path", "header")
        and str(part) not in _TYPE_TAGS
        and (isinstance(part, int) or str(part).replace("_", "a").isalnum())
    ]
    return _param(".".join(parts)) or "body"


def _validation_answer(errors: list[Any]) -> JSONResponse:
    problems: dict[str, list[str]] = {}
    for item in errors[:20]:
        field = _field_name(tuple(item.get("loc", ())))
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "extra_forbidden":
            message = "is not a parameter of this operation"
        elif item.get("type") == "json_invalid":
            field, message = "body", "the request body is not valid JSON"
        # A union reports each member: one line per field ("... or ...").
        if message not in problems.setdefault(field, []):
            problems[field].append(message)
    first = next(iter(problems), None)
    message = "; ".join(f"{field}: {' or '.join(said)}" for field, said in problems.items())
    body = error_body(
        message or "invalid request",
        kind="invalid_request_error",
        param=first,
        code="invalid_value",
    )
    return JSONResponse(body, status_code=400)


def error_response(error: Exception) -> JSONResponse:
    if isinstance(error, RequestValidationError | ValidationError):
        return _validation_answer(list(error.errors()))
    if isinstance(error, HTTPException) and error.status_code < 500:
        # FastAPI's own refusals, such as a body that is not UTF-8 ("There was an error
        # parsing the body"): the caller's fault, said in OpenAI's shape.
        body = error_body(str(error.detail), kind="invalid_request_error", param="body")
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)
    if not isinstance(error, TuneforgeError):
        log.error("unexpected error on the OpenAI face", exc_info=error)
        body = error_body("an internal error occurred; retry the request", kind="server_error")
        return JSONResponse(body, status_code=500)
    found = next(((s, k) for cls, s, k in _STATUS if isinstance(error, cls)), None)
    if found is None:
        log.error("unmapped domain error on the OpenAI face: %s", error.message)
        return JSONResponse(error_body(error.message, kind="server_error"), status_code=500)
    status, kind = found
    headers = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
    elif status == 503:
        headers["Retry-After"] = str(_RETRY_SECONDS)
    code = "invalid_api_key" if status == 401 else error.code.lower()
    body = error_body(error.message, kind=kind, param=_param(error.field), code=code)
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Every error of a route leaves in OpenAI's shape (the native routes keep theirs)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except Exception as error:  # every error leaves in OpenAI's shape
                return error_response(error)

        return handler
