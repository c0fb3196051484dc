"""What each Bedrock operation does, over the core. No HTTP here."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from datetime import datetime
from typing import Any

from jobstore.documents import JOB_ID_PATTERN, JobState, job_id_created_ms, utc_now
from jobstore.store import Job, JobStore
from service import custom_models, jobs
from service.auth.limits import TenantPolicy
from service.bedrock import registry
from service.bedrock.errors import (
    ConflictException,
    ResourceNotFoundException,
    ValidationException,
)
from service.bedrock.mapping import (
    NATIVE_STATES,
    STATUS,
    Arns,
    CreateJobIn,
    job_response,
    job_summary,
    to_native,
)
from service.bedrock.registry import NameRecord
from service.custom_models import CustomModelRecord
from service.errors import CorruptDocument, FailedPrecondition, JobNotFound
from service.schemas import JobPublic

log = logging.getLogger(__name__)

MAX_RESULTS = 1000
DEFAULT_MAX_RESULTS = 100
_MAX_SCANNED = 1000
_JOB_ID = re.compile(JOB_ID_PATTERN)


# -- lookups ---------------------------------------------------------------------


def find_job(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> Job:
    """One of the tenant's jobs by its ARN, its Bedrock name, or its native id."""
    if identifier.startswith("arn:"):
        job_id = arns.resource_id(identifier, "model-customization-job")
        if job_id is None:
            raise ResourceNotFoundException(f"no model customization job with ARN {identifier}")
        return _job_or_not_found(store, job_id, identifier, tenant)
    record = registry.get(store, tenant, identifier)
    if record is not None and record.jobId is not None:
        return _job_or_not_found(store, record.jobId, identifier, tenant)
    if _JOB_ID.match(identifier):
        return _job_or_not_found(store, identifier, identifier, tenant)
    raise ResourceNotFoundException(f"no model customization job named '{identifier}'")


def _job_or_not_found(store: JobStore, job_id: str, identifier: str, tenant: str) -> Job:
    try:
        return jobs.get_job(store, job_id, tenant=tenant)
    except JobNotFound:
        raise ResourceNotFoundException(f"no model customization job '{identifier}'") from None


def names_of(store: JobStore, job: Job) -> NameRecord | None:
    """The Bedrock record of a job created through this face (None for REST/gRPC ones)."""
    record = registry.get(store, job.spec.tenant, job.spec.jobName)
    return record if record is not None and record.jobId == job.spec.jobId else None


def find_model(
    store: JobStore, arns: Arns, identifier: str, *, tenant: str
) -> tuple[CustomModelRecord, Job]:
    name = identifier
    if identifier.startswith("arn:"):
        job_id = arns.resource_id(identifier, "custom-model")
        if job_id is None or not _JOB_ID.match(job_id):
            raise ResourceNotFoundException(f"no custom model with ARN {identifier}")
        job = _job_or_not_found(store, job_id, identifier, tenant)
        names = names_of(store, job)
        if names is None:
            raise ResourceNotFoundException(f"no custom model with ARN {identifier}")
        name = names.customModelName
    try:
        record, job = custom_models.get_model(store, tenant, name)
    except custom_models.ModelNotFound:
        raise ResourceNotFoundException(f"no custom model '{identifier}'") from None
    return record, job


def resolve_base_model(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> str:
    """An s3:// model folder as given, or the artifacts of a custom model (name or ARN)."""
    if identifier.startswith("s3://"):
        return identifier
    if identifier.startswith("arn:") and arns.resource_id(identifier, "custom-model") is None:
        raise ValidationException(
            f"baseModelIdentifier {identifier!r}: tuneforge has no foundation models; use an "
            "s3:// model folder, or a custom model's name or ARN"
        )
    try:
        _, job = find_model(store, arns, identifier, tenant=tenant)
    except ResourceNotFoundException:
        raise ValidationException(
            f"baseModelIdentifier {identifier!r} is neither an s3:// model folder nor an "
            "existing custom model's name or ARN"
        ) from None
    return custom_models.model_prefix(job)


# -- jobs --------------------------------------------------------------------------


def create_job(
    store: JobStore, arns: Arns, request: CreateJobIn, policy: TenantPolicy, gpus: int = 0
) -> Job:
    tenant = policy.tenant
    base_uri = resolve_base_model(store, arns, request.baseModelIdentifier, tenant=tenant)
    # Everything validated before anything is written.
    native = to_native(request, base_uri, gpus)
    jobs.check_buckets(native, policy)
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
    holder, ours = registry.claim(store, tenant, record)
    if not ours:
        token = request.clientRequestToken
        if token is None or holder.clientRequestToken != token:
            raise ConflictException(
                f"a model customization job named '{request.jobName}' already exists; job "
                "names are unique"
            )
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
        job, _ = jobs.create_job(store, native, policy)
    except Exception:
        if ours:
            registry.release(store, tenant, request.jobName)
        if reserved:  # e.g. the tenant's queue is full: the name must not stay taken
            custom_models.release(store, tenant, request.customModelName)
        raise
    registry.set_job_id(store, tenant, request.jobName, job.spec.jobId)
    custom_models.set_job_id(store, tenant, request.customModelName, job.spec.jobId)
    return job


def get_job(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> dict[str, Any]:
    job = find_job(store, arns, identifier, tenant=tenant)
    return job_response(JobPublic.from_job(job), names_of(store, job), arns)


def stop_job(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> None:
    job = find_job(store, arns, identifier, tenant=tenant)
    status = STATUS[JobPublic.from_job(job).state]
    if status == "Stopping":
        raise ConflictException(f"job {identifier} is already Stopping")
    if status != "InProgress":
        raise ValidationException(
            f"job {identifier} is {status}; only an InProgress job can be stopped"
        )
    try:
        jobs.stop_job(store, job.spec.jobId, tenant=tenant)
    except FailedPrecondition as error:  # it ended in between
        raise ValidationException(error.message) from None


def encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationException("nextToken is not a token this service issued") from None


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


def _all_ids(store: JobStore, tenant: str) -> list[str]:
    """The tenant's job ids, newest first: from its own index once every job is in it
    (other tenants' jobs cost nothing), else every job's."""
    own_index = store.tenant_index_complete()
    ids: list[str] = []
    while True:
        after = ids[-1] if ids else None
        if own_index:
            page = store.list_tenant_job_ids(tenant, after=after, limit=1000)
        else:
            page = store.list_job_ids(after=after, limit=1000)
        if not page:
            return ids
        ids.extend(page)


def list_jobs(
    store: JobStore,
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
    after_ms, before_ms = _ms(creation_time_after), _ms(creation_time_before)
    after_id = decode_token(next_token) if next_token else None
    if after_id is not None and not _JOB_ID.match(after_id):
        raise ValidationException("nextToken is not a token this service issued")
    ascending = sort_order == "Ascending"
    # Ids sort newest first; both orders read every id of the tenant's (one LIST per 1000
    # jobs), then read only the jobs they need. Fine for thousands of a tenant's jobs.
    ids = _all_ids(store, tenant)
    if ascending:
        ids.reverse()
    if after_id is not None:
        ids = ids[ids.index(after_id) + 1 :] if after_id in ids else []
    wanted: set[JobState] | None = NATIVE_STATES[status_equals] if status_equals else None
    summaries: list[dict[str, Any]] = []
    last: str | None = None
    scanned = 0
    for position, job_id in enumerate(ids):
        created = job_id_created_ms(job_id)
        if (after_ms is not None and created <= after_ms) or (
            before_ms is not None and created >= before_ms
        ):
            continue
        scanned += 1
        last = job_id
        try:
            job = store.get(job_id)
        except JobNotFound:
            continue
        except CorruptDocument as error:  # the reconcile loop fails it (or reports it)
            log.error("job %s left out of a listing: %s", job_id, error.message)
            continue
        if job.spec.tenant != tenant:
            continue
        public = JobPublic.from_job(job)
        state_matches = wanted is None or public.state in wanted
        name_matches = not name_contains or name_contains.lower() in public.jobName.lower()
        if state_matches and name_matches:
            summaries.append(job_summary(public, names_of(store, job), arns))
        more = position + 1 < len(ids)
        if len(summaries) == size or scanned >= _MAX_SCANNED:
            response: dict[str, Any] = {"modelCustomizationJobSummaries": summaries}
            if more:
                response["nextToken"] = encode_token(last)
            return response
    return {"modelCustomizationJobSummaries": summaries}


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


def get_model(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> dict[str, Any]:
    record, job = find_model(store, arns, identifier, tenant=tenant)
    return model_response(store, record, job, arns)


def delete_model(store: JobStore, arns: Arns, identifier: str, *, tenant: str) -> None:
    record, _ = find_model(store, arns, identifier, tenant=tenant)
    try:
        custom_models.delete_model(store, tenant, record.modelName)
    except custom_models.ModelConflict as error:
        raise ConflictException(error.message) from None
    except custom_models.ModelNotFound:
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
        decoded = decode_token(next_token)
        if not decoded.isdigit():
            raise ValidationException("nextToken is not a token this service issued")
        offset = int(decoded)
    after = creation_time_after.isoformat() if creation_time_after else None
    before = creation_time_before.isoformat() if creation_time_before else None
    summaries: list[dict[str, Any]] = []
    for record in custom_models.list_records(store, tenant):
        if name_contains and name_contains.lower() not in record.modelName.lower():
            continue
        try:
            record, job = custom_models.get_model(store, tenant, record.modelName)
        except (custom_models.ModelNotFound, JobNotFound):
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
        response["nextToken"] = encode_token(str(offset + size))
    return response
