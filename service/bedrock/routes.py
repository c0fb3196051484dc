"""The Bedrock-compatible routes: botocore's `bedrock` service model, paths and shapes.

Each handler parses, calls `operations` (over the core) and returns the mapped shape.
Errors and authentication are the route class's (`errors.bedrock_route_class`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.bedrock import operations
from service.bedrock.auth import authenticate, tenant_policy
from service.bedrock.errors import bedrock_route_class
from service.bedrock.mapping import Arns, parse_create
from service.context import ServiceContext

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


@router.post("/model-customization-jobs", summary="CreateModelCustomizationJob")
async def create_model_customization_job(request: Request) -> JSONResponse:
    parsed = parse_create(await request.body())
    context = _context(request)
    job = await run_in_threadpool(
        operations.create_job, context.store, _arns(request), parsed, tenant_policy(request)
    )
    if context.reconciler is not None:
        context.reconciler.kick()
    return JSONResponse({"jobArn": _arns(request).job(job.spec.jobId)}, status_code=201)


@router.get("/model-customization-jobs", summary="ListModelCustomizationJobs")
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
        _context(request).store,
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


# `:path`: an ARN arrives with its '/' percent-encoded, and the path is matched decoded.
@router.get("/model-customization-jobs/{job_identifier:path}", summary="GetModelCustomizationJob")
def get_model_customization_job(request: Request, job_identifier: str) -> dict[str, Any]:
    tenant = tenant_policy(request).tenant
    store = _context(request).store
    return operations.get_job(store, _arns(request), job_identifier, tenant=tenant)


@router.post(
    "/model-customization-jobs/{job_identifier:path}/stop", summary="StopModelCustomizationJob"
)
def stop_model_customization_job(request: Request, job_identifier: str) -> dict[str, Any]:
    context = _context(request)
    operations.stop_job(
        context.store, _arns(request), job_identifier, tenant=tenant_policy(request).tenant
    )
    if context.reconciler is not None:
        context.reconciler.kick()
    return {}


@router.get("/custom-models", summary="ListCustomModels")
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


@router.get("/custom-models/{model_identifier:path}", summary="GetCustomModel")
def get_custom_model(request: Request, model_identifier: str) -> dict[str, Any]:
    return operations.get_model(
        _context(request).store,
        _arns(request),
        model_identifier,
        tenant=tenant_policy(request).tenant,
    )


@router.delete("/custom-models/{model_identifier:path}", summary="DeleteCustomModel")
def delete_custom_model(request: Request, model_identifier: str) -> dict[str, Any]:
    operations.delete_model(
        _context(request).store,
        _arns(request),
        model_identifier,
        tenant=tenant_policy(request).tenant,
    )
    return {}
