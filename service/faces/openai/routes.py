"""The OpenAI-compatible face: files, models and fine-tuning jobs under /v1, as the `openai`
SDK calls them. Parse -> core -> map; every error in OpenAI's shape (errors.py).

Lists are OpenAI's cursor pages: `limit` and `after` (the last id of the page before),
answered with `has_more`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from jobstore.storage import ObjectMissing, parse_s3_uri
from service.core import paging
from service.core.files import FileRecord
from service.core.jobs import MAX_LIST_LIMIT, JobFilter
from service.core.model_catalog import ModelCatalog
from service.core.training_metrics import TRAINING_CSV
from service.errors import FileNotFound, PermissionDenied
from service.faces.context import ServiceContext
from service.faces.http_auth import CurrentTenant
from service.faces.openai import mapping
from service.faces.openai.errors import ERROR_RESPONSES, OpenAIRoute
from service.faces.openai.schemas import (
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Model,
    ModelDeleted,
    Page,
)

router = APIRouter(
    prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=ERROR_RESPONSES
)

Limit = Annotated[int, Query(ge=1, le=100)]
After = Annotated[str | None, Query(max_length=128)]
T = TypeVar("T", bound=BaseModel)


def _context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


def _page(items: Sequence[T], *, after: str | None, limit: int, key: Callable[[T], str]) -> Page:
    """The page of `items` (in the order they are listed) after the one whose id is
    `after` (from the start when it is None or not listed)."""
    start = 0
    if after is not None:
        ids = [key(item) for item in items]
        start = ids.index(after) + 1 if after in ids else 0
    data = list(items[start : start + limit])
    return Page(
        data=data,
        has_more=start + limit < len(items),
        first_id=key(data[0]) if data else None,
        last_id=key(data[-1]) if data else None,
    )


# -- files -----------------------------------------------------------------------------


def _file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.createdAt,
        filename=record.filename,
        purpose=record.purpose,
    )


@router.post("/files", response_model=FileObject, summary="Upload a file (multipart)")
def upload_file(
    request: Request,
    caller: CurrentTenant,
    file: Annotated[UploadFile, File(description="A JSONL file of training records.")],
    purpose: Annotated[str, Form(description="fine-tune")],
) -> FileObject:
    # Starlette has spooled the part to a temporary file: it streams to the store from
    # there, in parts, never whole in memory.
    record = _context(request).files.upload(
        caller.tenant, file.filename or "upload.jsonl", purpose, file.file
    )
    return _file_object(record)


@router.get("/files", response_model=Page, summary="List the caller's files")
def list_files(
    request: Request,
    caller: CurrentTenant,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: After = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> Page:
    records = _context(request).files.list(caller.tenant)
    if order == "asc":
        records.reverse()
    objects = [_file_object(r) for r in records if purpose is None or r.purpose == purpose]
    return _page(objects, after=after, limit=limit, key=lambda item: item.id)


def _result_file(context: ServiceContext, tenant: str, file_id: str) -> tuple[FileObject, Any]:
    """A job's result file (its step metrics CSV): (its object, its location)."""
    job = context.jobs.get(file_id.removeprefix(mapping.RESULT_FILE_PREFIX), tenant=tenant)
    location = parse_s3_uri(job.spec.output_prefix + TRAINING_CSV, field="file_id")
    head = context.store.storage.head(location)
    if head is None:
        raise FileNotFound(file_id)
    created = mapping.unix_seconds(job.status.endedAt or job.status.updatedAt) or 0
    return (
        FileObject(
            id=file_id,
            bytes=int(head["ContentLength"]),
            created_at=created,
            filename="step_metrics.csv",
            purpose="fine-tune-results",
        ),
        location,
    )


@router.get("/files/{file_id}", response_model=FileObject, summary="Describe a file")
def get_file(file_id: str, request: Request, caller: CurrentTenant) -> FileObject:
    context = _context(request)
    if file_id.startswith(mapping.RESULT_FILE_PREFIX):
        return _result_file(context, caller.tenant, file_id)[0]
    return _file_object(context.files.get(caller.tenant, file_id))


@router.get(
    "/files/{file_id}/content",
    summary="A file's bytes",
    response_model=None,
    responses={
        200: {
            "description": "The file as uploaded; a result file is CSV.",
            "content": {"application/octet-stream": {}, "text/csv": {}},
        }
    },
)
def file_content(file_id: str, request: Request, caller: CurrentTenant) -> StreamingResponse:
    context = _context(request)
    if file_id.startswith(mapping.RESULT_FILE_PREFIX):
        location = _result_file(context, caller.tenant, file_id)[1]
        try:
            chunks = context.store.storage.read_stream(location)
        except ObjectMissing:
            raise FileNotFound(file_id) from None
        return StreamingResponse(chunks, media_type="text/csv")
    return StreamingResponse(
        context.files.content(caller.tenant, file_id), media_type="application/octet-stream"
    )


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete a file")
def delete_file(file_id: str, request: Request, caller: CurrentTenant) -> FileDeleted:
    _context(request).files.delete(caller.tenant, file_id)
    return FileDeleted(id=file_id, deleted=True)


# -- models ----------------------------------------------------------------------------


def _models(catalog: ModelCatalog, tenant: str) -> list[Model]:
    models = [Model(id=name, created=0, owned_by="tuneforge") for name in catalog.base_models()]
    for job in catalog.fine_tuned_jobs(tenant):
        created = mapping.unix_seconds(job.status.endedAt) or 0
        models.append(Model(id=catalog.fine_tuned_name(job), created=created, owned_by=tenant))
    return models


@router.get("/models", response_model=Page, summary="Base models and the caller's own")
def list_models(request: Request, caller: CurrentTenant) -> Page:
    return Page(data=_models(_context(request).models, caller.tenant))


@router.get("/models/{model}", response_model=Model, summary="Describe a model")
def get_model(model: str, request: Request, caller: CurrentTenant) -> Model:
    catalog = _context(request).models
    if model in catalog.base_models():
        return Model(id=model, created=0, owned_by="tuneforge")
    job = catalog.fine_tuned_job(caller.tenant, model)
    created = mapping.unix_seconds(job.status.endedAt) or 0
    return Model(id=catalog.fine_tuned_name(job), created=created, owned_by=caller.tenant)


@router.delete("/models/{model}", response_model=ModelDeleted, summary="Delete a fine-tuned model")
def delete_model(model: str, request: Request, caller: CurrentTenant) -> ModelDeleted:
    catalog = _context(request).models
    if model in catalog.base_models():
        raise PermissionDenied(
            f"model '{model}' is a base model: only fine-tuned models can be deleted", field="model"
        )
    catalog.delete_fine_tuned(caller.tenant, model)
    return ModelDeleted(id=model, deleted=True)


# -- fine-tuning jobs ------------------------------------------------------------------


def _job(context: ServiceContext, job: Any) -> FineTuningJob:
    return mapping.fine_tuning_job(job, files=context.files, catalog=context.models)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, summary="Create a fine-tuning job")
def create_job(
    body: FineTuningJobCreate,
    request: Request,
    caller: CurrentTenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)] = None,
) -> FineTuningJob:
    context = _context(request)
    native = mapping.job_create(
        body,
        tenant=caller.tenant,
        files=context.files,
        catalog=context.models,
        idempotency_key=_usable_token(idempotency_key),
    )
    job, _ = context.jobs.create(native, caller)
    return _job(context, job)


def _usable_token(key: str | None) -> str | None:
    """The SDK's Idempotency-Key as the job's clientRequestToken: itself when it fits one
    (ASCII letters, digits, inner dashes, at most 256), else a token derived from it (a
    hash), so that a retried create with any key still finds its job."""
    if key is None:
        return None
    if (
        key.isascii()
        and key.replace("-", "").isalnum()
        and not key.startswith("-")
        and not key.endswith("-")
        and len(key) <= 256
    ):
        return key
    return "idempotency-key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@router.get("/fine_tuning/jobs", response_model=Page, summary="List fine-tuning jobs, newest first")
def list_jobs(
    request: Request,
    caller: CurrentTenant,
    limit: Limit = 20,
    after: After = None,
) -> Page:
    context = _context(request)
    wanted = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    where = JobFilter(tags=tuple(sorted(wanted.items()))) if wanted else None
    token = paging.job_token(after) if after else None
    found, _ = context.jobs.list_jobs(
        tenant=caller.tenant, limit=min(limit + 1, MAX_LIST_LIMIT), page_token=token, where=where
    )
    data = [_job(context, job) for job in found[:limit]]
    return Page(
        data=data,
        has_more=len(found) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, summary="Describe a job")
def get_job(job_id: str, request: Request, caller: CurrentTenant) -> FineTuningJob:
    context = _context(request)
    return _job(context, context.jobs.get(job_id, tenant=caller.tenant))


@router.post(
    "/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob, summary="Cancel a job"
)
def cancel_job(job_id: str, request: Request, caller: CurrentTenant) -> FineTuningJob:
    context = _context(request)
    return _job(context, context.jobs.stop(job_id, tenant=caller.tenant))


@router.post(
    "/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob, summary="Pause a job"
)
def pause_job(job_id: str, request: Request, caller: CurrentTenant) -> FineTuningJob:
    context = _context(request)
    return _job(context, context.jobs.pause(job_id, tenant=caller.tenant))


@router.post(
    "/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob, summary="Resume a job"
)
def resume_job(job_id: str, request: Request, caller: CurrentTenant) -> FineTuningJob:
    context = _context(request)
    return _job(context, context.jobs.resume(job_id, caller))


@router.get(
    "/fine_tuning/jobs/{job_id}/events", response_model=Page, summary="A job's events, newest first"
)
def list_events(
    job_id: str, request: Request, caller: CurrentTenant, limit: Limit = 20, after: After = None
) -> Page:
    context = _context(request)
    job = context.jobs.get(job_id, tenant=caller.tenant)
    events: list[FineTuningJobEvent] = []
    token = None
    while True:  # every event of the job (a few per state change, one per checkpoint)
        page, token = context.jobs.events(
            job_id, tenant=caller.tenant, page_size=1000, page_token=token
        )
        events.extend(mapping.message_event(job_id, event) for event in page)
        if token is None:
            break
    metrics = context.jobs.metrics(job_id, tenant=caller.tenant)
    events.extend(mapping.metrics_events(job, metrics))
    events.sort(key=lambda event: (event.created_at, event.type == "message"), reverse=True)
    return _page(events, after=after, limit=limit, key=lambda event: event.id)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=Page,
    summary="A job's checkpoints, newest first",
)
def list_checkpoints(
    job_id: str, request: Request, caller: CurrentTenant, limit: Limit = 10, after: After = None
) -> Page:
    context = _context(request)
    job = context.jobs.get(job_id, tenant=caller.tenant)
    name = context.models.fine_tuned_name(job)
    found = context.jobs.checkpoints(job_id, tenant=caller.tenant)
    checkpoints = [mapping.checkpoint(job, item, name) for item in reversed(found)]
    return _page(checkpoints, after=after, limit=limit, key=lambda item: item.id)
