"""The Bedrock-compatible routes: botocore's `bedrock` service model, paths and shapes.

Each handler parses, calls `operations` (over the core) and returns the mapped shape.
Errors and authentication are the route class's (`errors.bedrock_route_class`); what
/openapi.json says of each route's answers is `openapi.py`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor

from service.control.launch.capacity import launch_capacity
from service.faces.bedrock import operations
from service.faces.bedrock.auth import authenticate, tenant_policy
from service.faces.bedrock.errors import bedrock_route_class
from service.faces.bedrock.mapping import Arns, parse_create
from service.faces.bedrock.openapi import (
    CONFLICT,
    NOT_FOUND,
    create_request_body,
    error_responses,
    success_response,
)
from service.faces.context import ServiceContext
from service.settings import Settings


class IdentifierConvertor(PathConvertor):
    """Starlette's `path` (an ARN's '/' arrives percent-encoded and is matched decoded),
    newlines included: an identifier with one gets this face's own answer, not the
    router's native 404."""

    regex = "(?s:.*)"


register_url_convertor("identifier", IdentifierConvertor())

router = APIRouter(
    tags=["bedrock"], route_class=bedrock_route_class(authenticate), include_in_schema=True
)

# (operation, method, path) this face serves; tests check each against botocore's model.
OPERATIONS = (
    ("CreateModelCustomizationJob", "POST", "/model-customization-jobs"),
    ("GetModelCustomizationJob", "GET", "/model-customization-jobs/{jobIdentifier}"),
    ("ListModelCustomizationJobs", "GET", "/model-customization-jobs"),
    ("StopModelCustomizationJob", "POST", "/model-customization-jobs/{jobIdentifier}/stop"),
    ("GetCustomModel", "GET", "/custom-models/{modelIdentifier}"),
    ("ListCustomModels", "GET", "/custom-models"),
    ("DeleteCustomModel", "DELETE", "/custom-models/{modelIdentifier}"),
)


def _context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


def _arns(request: Request) -> Arns:
    return Arns.of(_context(request).settings)


Time = Annotated[datetime | None, Query()]
Text = Annotated[str | None, Query(max_length=2048)]


@router.post(
    "/model-customization-jobs",
    summary="CreateModelCustomizationJob",
    status_code=201,
    response_model=None,
    responses={
        201: success_response("CreateModelCustomizationJob", "The job is created."),
        **error_responses(*NOT_FOUND, *CONFLICT),
    },
    openapi_extra=create_request_body(),
)
async def create_model_customization_job(request: Request) -> JSONResponse:
    parsed = parse_create(await request.body())
    context = _context(request)
    job = await run_in_threadpool(
        operations.create_job,
        context.jobs,
        _arns(request),
        parsed,
        tenant_policy(request),
        bedrock_job_gpus(context.settings),
    )
    return JSONResponse({"jobArn": _arns(request).job(job.spec.jobId)}, status_code=201)


@router.get(
    "/model-customization-jobs",
    summary="ListModelCustomizationJobs",
    response_model=None,
    responses={
        200: success_response("ListModelCustomizationJobs", "A page of the caller's jobs."),
        **error_responses(),
    },
)
def list_model_customization_jobs(
    request: Request,
    creation_time_after: Annotated[Time, Query(alias="creationTimeAfter")] = None,
    creation_time_before: Annotated[Time, Query(alias="creationTimeBefore")] = None,
    status_equals: Annotated[Text, Query(alias="statusEquals")] = None,
    name_contains: Annotated[Text, Query(alias="nameContains")] = None,
    sort_by: Annotated[Text, Query(alias="sortBy")] = None,
    sort_order: Annotated[Text, Query(alias="sortOrder")] = None,
    max_results: Annotated[int | None, Query(alias="maxResults")] = None,
    next_token: Annotated[Text, Query(alias="nextToken")] = None,
) -> dict[str, Any]:
    return operations.list_jobs(
        _context(request).jobs,
        _arns(request),
        tenant=tenant_policy(request).tenant,
        creation_time_after=creation_time_after,
        creation_time_before=creation_time_before,
        status_equals=status_equals,
        name_contains=name_contains,
        sort_by=sort_by,
        sort_order=sort_order,
        max_results=max_results,
        next_token=next_token,
    )


@router.get(
    "/model-customization-jobs/{job_identifier:identifier}",
    summary="GetModelCustomizationJob",
    response_model=None,
    responses={
        200: success_response("GetModelCustomizationJob", "The job."),
        **error_responses(*NOT_FOUND),
    },
)
def get_model_customization_job(request: Request, job_identifier: str) -> dict[str, Any]:
    tenant = tenant_policy(request).tenant
    service = _context(request).jobs
    return operations.get_job(service, _arns(request), job_identifier, tenant=tenant)


@router.post(
    "/model-customization-jobs/{job_identifier:identifier}/stop",
    summary="StopModelCustomizationJob",
    response_model=None,
    responses={
        200: success_response("StopModelCustomizationJob", "The stop is requested."),
        **error_responses(*NOT_FOUND, *CONFLICT),
    },
)
def stop_model_customization_job(request: Request, job_identifier: str) -> dict[str, Any]:
    context = _context(request)
    operations.stop_job(
        context.jobs, _arns(request), job_identifier, tenant=tenant_policy(request).tenant
    )
    return {}


@router.get(
    "/custom-models",
    summary="ListCustomModels",
    response_model=None,
    responses={
        200: success_response("ListCustomModels", "A page of the caller's models."),
        **error_responses(),
    },
)
def list_custom_models(
    request: Request,
    creation_time_after: Annotated[Time, Query(alias="creationTimeAfter")] = None,
    creation_time_before: Annotated[Time, Query(alias="creationTimeBefore")] = None,
    name_contains: Annotated[Text, Query(alias="nameContains")] = None,
    base_model_arn_equals: Annotated[Text, Query(alias="baseModelArnEquals")] = None,
    sort_by: Annotated[Text, Query(alias="sortBy")] = None,
    sort_order: Annotated[Text, Query(alias="sortOrder")] = None,
    max_results: Annotated[int | None, Query(alias="maxResults")] = None,
    next_token: Annotated[Text, Query(alias="nextToken")] = None,
) -> dict[str, Any]:
    return operations.list_models(
        _context(request).store,
        _arns(request),
        tenant=tenant_policy(request).tenant,
        creation_time_after=creation_time_after,
        creation_time_before=creation_time_before,
        name_contains=name_contains,
        base_model_arn_equals=base_model_arn_equals,
        sort_by=sort_by,
        sort_order=sort_order,
        max_results=max_results,
        next_token=next_token,
    )


@router.get(
    "/custom-models/{model_identifier:identifier}",
    summary="GetCustomModel",
    response_model=None,
    responses={
        200: success_response("GetCustomModel", "The model."),
        **error_responses(*NOT_FOUND),
    },
)
def get_custom_model(request: Request, model_identifier: str) -> dict[str, Any]:
    return operations.get_model(
        _context(request).jobs,
        _arns(request),
        model_identifier,
        tenant=tenant_policy(request).tenant,
    )


@router.delete(
    "/custom-models/{model_identifier:identifier}",
    summary="DeleteCustomModel",
    response_model=None,
    responses={
        200: success_response("DeleteCustomModel", "The model is deleted."),
        **error_responses(*NOT_FOUND, *CONFLICT),
    },
)
def delete_custom_model(request: Request, model_identifier: str) -> dict[str, Any]:
    operations.delete_model(
        _context(request).jobs,
        _arns(request),
        model_identifier,
        tenant=tenant_policy(request).tenant,
    )
    return {}


def bedrock_job_gpus(settings: Settings) -> int:
    """GPUs a Bedrock-face job asks for: the operator's setting, else one on a local
    host with GPUs (Bedrock's API cannot say), else none."""
    if settings.bedrock_job_gpus is not None:
        return settings.bedrock_job_gpus
    return 1 if launch_capacity(settings).host_gpus else 0
