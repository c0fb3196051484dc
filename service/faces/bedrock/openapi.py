"""What /openapi.json says about the Bedrock face: its real answers, errors included.

Every route's errors leave through `errors.error_response`: a JSON body
`{"message": ...}` and the error's name in the `x-amzn-ErrorType` header (where botocore
reads it), with `x-amzn-RequestId` on every answer and `Retry-After` on a 503. Request
validation is a `ValidationException` (400), never FastAPI's 422. The success bodies'
shapes come from botocore's own service model (`bedrock` 2023-04-20), types and required
members only: AWS's patterns and lengths describe AWS's ids (tuneforge's job ids are 16
characters, not 12), so they are left out; `customizationType` also lists the native
types (PREFERENCE, CLASSIFICATION), as a job of any face is answered with its own. The
create body's schema is `CreateJobIn`'s, the model the route validates with.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import botocore.session

from service.core.schemas import JobCreate
from service.faces.bedrock.errors import (
    ERROR_CLASSES,
    AccessDeniedException,
    BedrockError,
    ConflictException,
    ResourceNotFoundException,
    ServiceUnavailableException,
    ThrottlingException,
    ValidationException,
)
from service.faces.bedrock.mapping import CreateJobIn

_REQUEST_ID = {
    "description": "The request's id (a UUID), on every answer of this face.",
    "schema": {"type": "string"},
}

# Every operation: bad input, a refused caller, a rate limit, a bug, the store away.
_ALWAYS: tuple[type[BedrockError], ...] = (
    ValidationException,
    AccessDeniedException,
    ThrottlingException,
    ServiceUnavailableException,
)
_INTERNAL = next(e for e in ERROR_CLASSES if e.status == 500)


def _error_response(errors: list[type[BedrockError]]) -> dict[str, Any]:
    """One status code's answer: which error types it carries, and their shape."""
    headers: dict[str, Any] = {
        "x-amzn-ErrorType": {
            "description": "The error's name, as botocore's exceptions are named.",
            "required": True,
            "schema": {"type": "string", "enum": sorted(e.error_type for e in errors)},
        },
        "x-amzn-RequestId": _REQUEST_ID,
    }
    if any(e is ServiceUnavailableException for e in errors):
        headers["Retry-After"] = {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    return {
        "description": " or ".join(sorted(e.error_type for e in errors)),
        "headers": headers,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}},
                }
            }
        },
    }


def error_responses(*extra: type[BedrockError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that may also answer the `extra` errors."""
    by_status: dict[int, list[type[BedrockError]]] = {}
    for error in (*_ALWAYS, _INTERNAL, *extra):
        by_status.setdefault(error.status, []).append(error)
    responses: dict[int | str, dict[str, Any]] = {
        status: _error_response(errors) for status, errors in sorted(by_status.items())
    }
    # Before the route runs: a body over TUNEFORGE_MAX_REQUEST_BYTES is a 413 in the
    # native error shape (service/server/http_app.py). A range entry also keeps FastAPI from
    # listing a 422 this face never sends.
    responses["4XX"] = {
        "description": "413: the request body is too large (the native error shape).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return responses


NOT_FOUND = (ResourceNotFoundException,)
CONFLICT = (ConflictException,)


# -- success bodies, from botocore's service model ------------------------------------


@functools.cache
def _service_model() -> Any:
    return botocore.session.get_session().get_service_model("bedrock")


def _schema_of(shape: Any, depth: int = 0) -> dict[str, Any]:
    if depth > 12:  # recursive shapes: deeper levels stay unconstrained
        return {}
    kind = shape.type_name
    if kind == "structure":
        properties = {name: _schema_of(member, depth + 1) for name, member in shape.members.items()}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if shape.required_members:
            schema["required"] = list(shape.required_members)
        return schema
    if kind == "list":
        return {"type": "array", "items": _schema_of(shape.member, depth + 1)}
    if kind == "map":
        return {"type": "object", "additionalProperties": _schema_of(shape.value, depth + 1)}
    if kind == "string":
        if not shape.enum:
            return {"type": "string"}
        enum = list(shape.enum)
        if shape.name == "CustomizationType":
            native = typing.get_args(JobCreate.model_fields["customizationType"].annotation)
            enum += [str(name) for name in native if name not in enum]
        return {"type": "string", "enum": enum}
    if kind == "timestamp":
        return {"type": "string", "format": "date-time"}
    if kind in ("integer", "long"):
        return {"type": "integer"}
    if kind in ("float", "double"):
        return {"type": "number"}
    if kind == "boolean":
        return {"type": "boolean"}
    return {}  # blobs, documents: any JSON


def success_response(operation: str, description: str) -> dict[str, Any]:
    """The success answer's body schema, botocore's output shape for `operation`."""
    output = _service_model().operation_model(operation).output_shape
    schema = _schema_of(output) if output is not None else {"type": "object"}
    return {
        "description": description,
        "headers": {"x-amzn-RequestId": _REQUEST_ID},
        "content": {"application/json": {"schema": schema}},
    }


def create_request_body() -> dict[str, Any]:
    """`openapi_extra` for the create route, which reads its body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(CreateJobIn.model_json_schema())}},
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema with each `#/$defs/...` reference replaced by its definition
    (CreateJobIn has no recursion), so it can stand inside one operation."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
