"""What each Bedrock operation does, over the core (`JobService`). No HTTP here.

What is Bedrock's alone lives here: job and custom-model names (registry.py,
service/core/custom_models.py), ARNs, and the shapes of its answers. Creating, reading,
listing and stopping jobs, and their paging tokens, are the core's.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from jobstore.documents import JOB_ID_PATTERN, utc_now
from jobstore.store import Job, JobStore
from service.auth.limits import TenantPolicy
from service.core import custom_models, paging
from service.core.custom_models import CustomModelRecord
from service.core.job_service import JobService
from service.core.jobs import JobFilter
from service.core.schemas import JobPublic
from service.errors import FailedPrecondition, JobNotFound, ModelNotFound, NameConflict
from service.faces.bedrock.errors import (
    ConflictException,
    ResourceNotFoundException,
    ValidationException,
)
from service.faces.bedrock.mapping import (
    NATIVE_STATES,
    STATUS,
    Arns,
    CreateJobIn,
    job_response,
    job_summary,
    to_native,
)
from service.faces.bedrock.registry import NameRecord, job_names

log = logging.getLogger(__name__)

MAX_RESULTS = 1000
DEFAULT_MAX_RESULTS = 100
_MAX_SCANNED = 1000
_JOB_ID = re.compile(JOB_ID_PATTERN)

# What AWS answers when a create asks for a job name already taken: a ValidationException
# with exactly this message. Callers match the text itself: Apache Airflow's
# BedrockCustomizeModelOperator (ensure_unique_job_name=True) compares the message to this
# string and, only when it is equal, retries under a new name; any other text fails the task.
JOB_NAME_IN_USE = "The provided job name is currently in use."


# -- lookups ---------------------------------------------------------------------


def find_job(
    service: JobService, arns: Arns, identifier: str, *, tenant: str, fresh: bool = False
) -> Job:
    """One of the tenant's jobs by its ARN, its Bedrock name, or its native id; `fresh`:
    as the store holds it now, not up to a second old (to decide on a stop)."""
    if identifier.startswith("arn:"):
        job_id = arns.resource_id(identifier, "model-customization-job")
        if job_id is None:
            raise ResourceNotFoundException(f"no model customization job with ARN {identifier}")
        return _job_or_not_found(service, job_id, identifier, tenant, fresh)
    record = job_names(service.store).get(tenant, identifier)
    if record is not None and record.jobId is not None:
        return _job_or_not_found(service, record.jobId, identifier, tenant, fresh)
    if _JOB_ID.match(identifier):
        return _job_or_not_found(service, identifier, identifier, tenant, fresh)
    raise ResourceNotFoundException(f"no model customization job named '{identifier}'")


def _job_or_not_found(
    service: JobService, job_id: str, identifier: str, tenant: str, fresh: bool = False
) -> Job:
    try:
        return service.get(job_id, tenant=tenant, fresh=fresh)
    except JobNotFound:
        raise ResourceNotFoundException(f"no model customization job '{identifier}'") from None


def names_of(store: JobStore, job: Job) -> NameRecord | None:
    """The Bedrock record of a job created through this face (None for REST/gRPC ones)."""
    record = job_names(store).get(job.spec.tenant, job.spec.jobName)
    return record if record is not None and record.jobId == job.spec.jobId else None


def find_model(
    service: JobService, arns: Arns, identifier: str, *, tenant: str
) -> tuple[CustomModelRecord, Job]:
    name = identifier
    if identifier.startswith("arn:"):
        job_id = arns.resource_id(identifier, "custom-model")
        if job_id is None or not _JOB_ID.match(job_id):
            raise ResourceNotFoundException(f"no custom model with ARN {identifier}")
        job = _job_or_not_found(service, job_id, identifier, tenant)
        names = names_of(service.store, job)
        if names is None:
            raise ResourceNotFoundException(f"no custom model with ARN {identifier}")
        name = names.customModelName
    try:
        record, job = custom_models.get_model(service.store, tenant, name)
    except ModelNotFound:
        raise ResourceNotFoundException(f"no custom model '{identifier}'") from None
    return record, job


def resolve_base_model(service: JobService, arns: Arns, identifier: str, *, tenant: str) -> str:
    """An s3:// model folder as given, or the artifacts of a custom model (name or ARN)."""
    if identifier.startswith("s3://"):
        return identifier
    if identifier.startswith("arn:") and arns.resource_id(identifier, "custom-model") is None:
        raise ValidationException(
            f"baseModelIdentifier {identifier!r}: tuneforge has no foundation models; use an "
            "s3:// model folder, or a custom model's name or ARN"
        )
    try:
        _, job = find_model(service, arns, identifier, tenant=tenant)
    except ResourceNotFoundException:
        raise ValidationException(
            f"baseModelIdentifier {identifier!r} is neither an s3:// model folder nor an "
            "existing custom model's name or ARN"
        ) from None
    return custom_models.model_prefix(job)


# -- jobs --------------------------------------------------------------------------


def create_job(
    service: JobService, arns: Arns, request: CreateJobIn, policy: TenantPolicy, gpus: int = 0
) -> Job:
    tenant = policy.tenant
    store = service.store
    base_uri = resolve_base_model(service, arns, request.baseModelIdentifier, tenant=tenant)
    # Everything validated before anything is written (names are claimed below).
    native = to_native(request, base_uri, gpus)
    # Its resources are the operator's (TUNEFORGE_BEDROCK_JOB_GPUS), not the caller's.
    service.check_create(native, policy, caller_resources=False)
    now = utc_now()
    record = NameRecord(
        jobName=request.jobName,
        fingerprint=request.fingerprint(),
        clientRequestToken=request.clientRequestToken,
        customModelName=request.customModelName,
        roleArn=request.roleArn,
        baseModelIdentifier=request.baseModelIdentifier,
        customModelTags={tag.key: tag.value for tag in request.customModelTags},
        createdAt=now,
    )
    names = job_names(store)
    holder, ours = names.claim(tenant, request.jobName, record)
    if not ours:
        token = request.clientRequestToken
        if token is None or holder.clientRequestToken != token:
            raise ValidationException(JOB_NAME_IN_USE)
        if holder.fingerprint != record.fingerprint:
            raise ConflictException(
                f"clientRequestToken '{token}' was already used with different parameters; "
                "send the same request to get that job back, or use a new token"
            )
    reserved = False
    try:
        wanted = CustomModelRecord(
            modelName=request.customModelName,
            jobName=request.jobName,
            createdAt=now,
            tags=record.customModelTags,
        )
        model = custom_models.reserve(store, tenant, wanted)
        reserved = model is wanted
        if model.jobName != request.jobName and not custom_models.take_over(
            store, tenant, wanted, model
        ):
            raise ConflictException(
                f"a custom model named '{request.customModelName}' already exists (made by job "
                f"'{model.jobName}'); custom model names are unique"
            )
        job, _ = service.create(native, policy, caller_resources=False)
    except Exception:
        if ours:
            names.release(tenant, request.jobName)
        if reserved:  # e.g. the tenant's queue is full: the name must not stay taken
            custom_models.release(store, tenant, request.customModelName)
        raise
    names.set_job_id(tenant, request.jobName, job.spec.jobId)
    custom_models.set_job_id(store, tenant, request.customModelName, job.spec.jobId)
    return job


def get_job(service: JobService, arns: Arns, identifier: str, *, tenant: str) -> dict[str, Any]:
    job = find_job(service, arns, identifier, tenant=tenant)
    return job_response(JobPublic.from_job(job), names_of(service.store, job), arns)


def stop_job(service: JobService, arns: Arns, identifier: str, *, tenant: str) -> None:
    job = find_job(service, arns, identifier, tenant=tenant, fresh=True)
    status = STATUS[JobPublic.from_job(job).state]
    if status == "Stopping":
        raise ConflictException(f"job {identifier} is already Stopping")
    if status != "InProgress":
        raise ValidationException(
            f"job {identifier} is {status}; only an InProgress job can be stopped"
        )
    try:
        service.stop(job.spec.jobId, tenant=tenant)
    except FailedPrecondition as error:  # it ended in between
        raise ValidationException(error.message) from None


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValidationException("creation time filters need a time zone (use UTC)")
    return int(moment.timestamp() * 1000)


def _check_paging(max_results: int | None, sort_by: str | None, sort_order: str | None) -> int:
    if sort_by not in (None, "CreationTime"):
        raise ValidationException("sortBy must be CreationTime")
    if sort_order not in (None, "Ascending", "Descending"):
        raise ValidationException("sortOrder must be Ascending or Descending")
    size = DEFAULT_MAX_RESULTS if max_results is None else max_results
    if not 1 <= size <= MAX_RESULTS:
        raise ValidationException(f"maxResults must be between 1 and {MAX_RESULTS}")
    return size


def list_jobs(
    service: JobService,
    arns: Arns,
    *,
    tenant: str,
    creation_time_after: datetime | None,
    creation_time_before: datetime | None,
    status_equals: str | None,
    name_contains: str | None,
    sort_by: str | None,
    sort_order: str | None,
    max_results: int | None,
    next_token: str | None,
) -> dict[str, Any]:
    size = _check_paging(max_results, sort_by, sort_order)
    if status_equals is not None and status_equals not in NATIVE_STATES:
        raise ValidationException("statusEquals must be one of " + ", ".join(sorted(NATIVE_STATES)))
    where = JobFilter(
        states=frozenset(NATIVE_STATES[status_equals]) if status_equals else None,
        created_after_ms=_ms(creation_time_after),
        created_before_ms=_ms(creation_time_before),
        name_contains=name_contains,
    )
    found, token = service.list_jobs(
        tenant=tenant,
        limit=size,
        page_token=next_token,
        where=where,
        ascending=sort_order == "Ascending",
        token_field="nextToken",
    )
    summaries = [
        job_summary(JobPublic.from_job(job), names_of(service.store, job), arns) for job in found
    ]
    response: dict[str, Any] = {"modelCustomizationJobSummaries": summaries}
    if token is not None:
        response["nextToken"] = token
    return response


# -- custom models -------------------------------------------------------------------


def model_response(
    store: JobStore, record: CustomModelRecord, job: Job, arns: Arns
) -> dict[str, Any]:
    full = job_response(JobPublic.from_job(job), names_of(store, job), arns)
    response: dict[str, Any] = {
        "modelArn": arns.model(job.spec.jobId),
        "modelName": record.modelName,
        "jobName": job.spec.jobName,
        "jobArn": arns.job(job.spec.jobId),
        "modelStatus": "Active",
        "creationTime": job.status.endedAt or record.createdAt,
    }
    for key in (
        "baseModelArn",
        "customizationType",
        "hyperParameters",
        "trainingDataConfig",
        "validationDataConfig",
        "outputDataConfig",
        "trainingMetrics",
        "validationMetrics",
    ):
        if key in full:
            response[key] = full[key]
    return response


def get_model(service: JobService, arns: Arns, identifier: str, *, tenant: str) -> dict[str, Any]:
    record, job = find_model(service, arns, identifier, tenant=tenant)
    return model_response(service.store, record, job, arns)


def delete_model(service: JobService, arns: Arns, identifier: str, *, tenant: str) -> None:
    record, _ = find_model(service, arns, identifier, tenant=tenant)
    try:
        custom_models.delete_model(service.store, tenant, record.modelName)
    except NameConflict as error:
        raise ConflictException(error.message) from None
    except ModelNotFound:
        raise ResourceNotFoundException(f"no custom model '{identifier}'") from None


def list_models(
    store: JobStore,
    arns: Arns,
    *,
    tenant: str,
    creation_time_after: datetime | None,
    creation_time_before: datetime | None,
    name_contains: str | None,
    base_model_arn_equals: str | None,
    sort_by: str | None,
    sort_order: str | None,
    max_results: int | None,
    next_token: str | None,
) -> dict[str, Any]:
    size = _check_paging(max_results, sort_by, sort_order)
    offset = 0
    if next_token:
        offset = paging.offset_after(next_token, field="nextToken")
    after = creation_time_after.isoformat() if creation_time_after else None
    before = creation_time_before.isoformat() if creation_time_before else None
    summaries: list[dict[str, Any]] = []
    for record in custom_models.list_records(store, tenant):
        if name_contains and name_contains.lower() not in record.modelName.lower():
            continue
        try:
            record, job = custom_models.get_model(store, tenant, record.modelName)
        except (ModelNotFound, JobNotFound):
            continue  # reserved by a job that has not completed
        model = model_response(store, record, job, arns)
        created = datetime.fromisoformat(model["creationTime"])
        if after and created <= datetime.fromisoformat(after):
            continue
        if before and created >= datetime.fromisoformat(before):
            continue
        if base_model_arn_equals and model.get("baseModelArn") != base_model_arn_equals:
            continue
        summaries.append(
            {
                "modelArn": model["modelArn"],
                "modelName": model["modelName"],
                "creationTime": model["creationTime"],
                "baseModelArn": model.get("baseModelArn", ""),
                "baseModelName": "",
                "customizationType": model["customizationType"],
                "ownerAccountId": arns.account,
                "modelStatus": "Active",
            }
        )
    summaries.sort(key=lambda m: (m["creationTime"], m["modelName"]))
    if sort_order != "Ascending":
        summaries.reverse()
    page = summaries[offset : offset + size]
    response: dict[str, Any] = {"modelSummaries": page}
    if offset + size < len(summaries):
        response["nextToken"] = paging.offset_token(offset + size)
    return response
