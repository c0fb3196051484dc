"""REST v1 job routes: parse, call the core, shape the answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from jobstore.documents import JobEvent, JobState, JobValidationReport
from service.core import jobs
from service.core.schemas import ErrorResponse, JobCreate, JobList, JobPublic
from service.faces.http_auth import CurrentTenant
from service.faces.rest.deps import JobsDep
from service.faces.rest.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[str, Path(description="The job's id.", examples=["0p5v2m8x3k7qa1b2"])]


def _json(model: BaseModel) -> Response:
    """The model as JSON, serialized once. For a returned model FastAPI dumps it,
    validates the dump against the response model and serializes that again: about
    0.5 ms for one job, more than the rest of a describe served from memory. The
    routes that use this still declare `response_model` (the OpenAPI schema)."""
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


class JobCreateRequest(JobCreate):
    """A fine-tuning job to create, or with validateOnly, to check without creating."""

    validateOnly: bool = Field(
        default=False,
        description="true: create nothing; run the job's VALIDATING stage on its data and "
        "base model (every record's format, token counts, lengths, labels, steps, a time "
        "estimate) and answer 200 with a JobValidationReport, whether the data is valid or "
        "not. The request is checked as a create is (422/400/403 naming the field).",
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    # Two shapes: documented per status below, each returned as its model.
    response_model=None,
    responses={
        201: {"model": JobPublic, "description": "The job, created (QUEUED)."},
        200: {
            "model": JobPublic | JobValidationReport,
            "description": "Idempotent repeat: the existing job (JobPublic); or with "
            "validateOnly, the dry run's report (JobValidationReport).",
        },
        422: {
            "model": ErrorResponse,
            "description": "The request body does not match the schema (the field is named); "
            "or with validateOnly, the dry run ran past the server's time limit "
            "(DRY_RUN_TIMEOUT): create the job, or dry-run a sample of the data.",
        },
        501: {
            "model": ErrorResponse,
            "description": "validateOnly: this server cannot run dry runs (the trainer's "
            "packages are not installed beside it).",
        },
    },
    summary="Create a fine-tuning job, or dry-run one (validateOnly)",
)
def create_job(
    request: JobCreateRequest, service: JobsDep, caller: CurrentTenant, response: Response
) -> JobPublic | JobValidationReport:
    if request.validateOnly:
        response.status_code = status.HTTP_200_OK
        return service.validate(_job_create(request), caller)
    job, created = service.create(_job_create(request), caller)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.spec.jobId}"
    return JobPublic.from_job(job)


def _job_create(request: JobCreateRequest) -> JobCreate:
    """The create request without the face's own field (the same JobCreate every face
    hands the core)."""
    return JobCreate.model_validate(
        request.model_dump(mode="json", exclude={"validateOnly"}, exclude_unset=True)
    )


@router.get("/{job_id}", response_model=JobPublic, summary="Describe a job")
async def get_job(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> Response:
    # From memory on the event loop when the replica knows the job well enough (most
    # describes); else the store, in the thread pool. The hop to a thread costs more
    # than the rest of an answer from memory.
    job = service.remembered(job_id, tenant=caller.tenant)
    if job is None:
        job = await run_in_threadpool(service.get, job_id, tenant=caller.tenant)
    return _json(JobPublic.from_job(job))


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    service: JobsDep,
    caller: CurrentTenant,
    state: Annotated[
        JobState | None, Query(alias="status", description="Only jobs in this state.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE_SIZE, description="Page size.")] = 20,
    page_token: Annotated[
        str | None, Query(alias="pageToken", max_length=64, description="From nextPageToken.")
    ] = None,
) -> Response:
    found, next_token = service.list_jobs(
        tenant=caller.tenant, state=state, limit=limit, page_token=page_token
    )
    return _json(JobList(jobs=[JobPublic.from_job(job) for job in found], nextPageToken=next_token))


@router.post(
    "/{job_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    summary="Ask a job to stop",
)
def stop_job(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> JobPublic:
    return JobPublic.from_job(service.stop(job_id, tenant=caller.tenant))


@router.post(
    "/{job_id}/pause",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    summary="Ask a job to pause: a committed checkpoint, then PAUSED until resumed",
)
def pause_job(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> JobPublic:
    return JobPublic.from_job(service.pause(job_id, tenant=caller.tenant))


@router.post(
    "/{job_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    summary="Resume a paused job: queued again, it goes on from its newest checkpoint",
)
def resume_job(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> JobPublic:
    return JobPublic.from_job(service.resume(job_id, caller))


# -- events, checkpoints, logs (the gRPC face has the same: ListJobEvents, ...) --------


class JobEventList(BaseModel):
    events: list[JobEvent]
    nextPageToken: str | None = Field(
        default=None, description="Pass as pageToken for the next page; absent on the last."
    )


class CheckpointList(BaseModel):
    checkpoints: list[jobs.Checkpoint]


@router.get("/{job_id}/events", response_model=JobEventList, summary="A job's events, oldest first")
def list_job_events(
    job_id: JobId,
    service: JobsDep,
    caller: CurrentTenant,
    page_size: Annotated[
        int,
        Query(alias="pageSize", ge=1, le=jobs.MAX_EVENTS_PAGE_SIZE, description="Page size."),
    ] = jobs.DEFAULT_EVENTS_PAGE_SIZE,
    page_token: Annotated[
        str | None, Query(alias="pageToken", max_length=64, description="From nextPageToken.")
    ] = None,
) -> JobEventList:
    events, next_token = service.events(
        job_id, tenant=caller.tenant, page_size=page_size, page_token=page_token
    )
    return JobEventList(events=events, nextPageToken=next_token)


@router.get(
    "/{job_id}/checkpoints",
    response_model=CheckpointList,
    summary="A job's committed checkpoints, by step",
)
def list_checkpoints(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> CheckpointList:
    return CheckpointList(checkpoints=service.checkpoints(job_id, tenant=caller.tenant))


@router.get(
    "/{job_id}/logs",
    response_class=Response,
    summary="The trainer's log (one attempt's), or a slice of it",
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "Log bytes. X-Next-Offset: pass as offset to read on; "
            "X-Log-Size: the whole log's size now; X-Log-Attempt: whose log it is.",
        }
    },
)
def read_job_log(
    job_id: JobId,
    service: JobsDep,
    caller: CurrentTenant,
    offset: Annotated[
        int, Query(description="Byte to start at; negative counts from the end.")
    ] = 0,
    max_bytes: Annotated[
        int,
        Query(alias="maxBytes", ge=1, le=jobs.MAX_LOG_BYTES, description="Most bytes to return."),
    ] = jobs.DEFAULT_LOG_BYTES,
    attempt: Annotated[
        int | None,
        Query(ge=1, description="Whose log: an attempt number; the current attempt's if unset."),
    ] = None,
) -> Response:
    piece = service.read_log(
        job_id, tenant=caller.tenant, offset=offset, max_bytes=max_bytes, attempt=attempt
    )
    headers = {"X-Next-Offset": str(piece.next_offset), "X-Log-Size": str(piece.size)}
    if piece.attempt is not None:
        headers["X-Log-Attempt"] = str(piece.attempt)
    return Response(piece.data, media_type="text/plain; charset=utf-8", headers=headers)
