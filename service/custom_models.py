"""Custom models: the models that completed jobs produce, by name. Transport-free.

    models/<tenant>/<name>.json   {modelName, jobName, jobId, createdAt, tags}   (If-None-Match)

Names are unique per tenant; one tenant never sees, nor collides with, another's.

A name is reserved when its job is created and becomes a usable model when that job is
COMPLETED (a job that FAILED or was STOPPED gives its name up to the next create); its
artifacts are the job's `<output>/model-customization-job-<id>/model/`.
Deleting a model removes those artifacts and the record, unless a job that has not
ended trains on it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from jobstore.documents import JobState
from jobstore.storage import PreconditionFailed, S3Location, parse_s3_uri
from jobstore.store import Job, JobStore
from service.errors import TuneforgeError

MODEL_NAME_PATTERN = r"^([0-9a-zA-Z][_-]?){1,63}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ModelNotFound(TuneforgeError):
    code = "NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"no custom model named '{name}'", field="modelIdentifier")


class ModelConflict(TuneforgeError):
    """The model name is taken, or the model is in use."""

    code = "CONFLICT"


class CustomModelRecord(BaseModel):
    modelName: str
    jobName: str
    jobId: str | None = None
    createdAt: str
    tags: dict[str, str] = {}


def _location(store: JobStore, tenant: str, name: str) -> S3Location:
    if not _MODEL_NAME.match(name) or len(name) > 63 or not _TENANT.match(tenant):
        raise ModelNotFound(name)
    return S3Location(store.bucket, f"models/{tenant}/{name}.json")


def model_prefix(job: Job) -> str:
    return job.spec.output_prefix + "model/"


def reserve(store: JobStore, tenant: str, record: CustomModelRecord) -> CustomModelRecord:
    """Create the record; return the one that holds the name (ours or an earlier one)."""
    location = _location(store, tenant, record.modelName)
    try:
        store.storage.put_json(location, record.model_dump(mode="json"), if_none_match=True)
        return record
    except PreconditionFailed:
        found = get_record(store, tenant, record.modelName)
        if found is None:
            raise ModelConflict(f"custom model name '{record.modelName}' is busy; retry") from None
        return found


def take_over(
    store: JobStore, tenant: str, record: CustomModelRecord, holder: CustomModelRecord
) -> bool:
    """Give the name to `record` if `holder`'s job ended without making a model.

    Returns whether it did: the holder's job FAILED or STOPPED, and no other create took
    the name first (If-Match on the record as read).
    """
    if holder.jobId is None:
        return False  # its create is in flight (or died half-way): leave it be
    try:
        state = store.get_status(holder.jobId)[0].state
    except TuneforgeError:
        return False
    if state not in (JobState.FAILED, JobState.STOPPED):
        return False
    found = store.storage.get_json(_location(store, tenant, holder.modelName))
    if found is None or CustomModelRecord.model_validate(found[0]) != holder:
        return False
    try:
        store.storage.put_json(
            _location(store, tenant, record.modelName),
            record.model_dump(mode="json"),
            if_match=found[1],
        )
    except PreconditionFailed:
        return False
    return True


def set_job_id(store: JobStore, tenant: str, name: str, job_id: str) -> None:
    found = store.storage.get_json(_location(store, tenant, name))
    if found is None:
        return
    record = CustomModelRecord.model_validate(found[0])
    if record.jobId is None:
        record.jobId = job_id
        try:
            store.storage.put_json(
                _location(store, tenant, name), record.model_dump(mode="json"), if_match=found[1]
            )
        except PreconditionFailed:
            pass  # another replica finished the same create


def release(store: JobStore, tenant: str, name: str) -> None:
    store.storage.delete(_location(store, tenant, name))


def get_record(store: JobStore, tenant: str, name: str) -> CustomModelRecord | None:
    found = store.storage.get_json(_location(store, tenant, name))
    return None if found is None else CustomModelRecord.model_validate(found[0])


def list_records(store: JobStore, tenant: str) -> list[CustomModelRecord]:
    if not _TENANT.match(tenant):
        return []
    records = []
    for item in store.storage.list_objects(S3Location(store.bucket, f"models/{tenant}/")):
        found = store.storage.get_json(S3Location(store.bucket, item["key"]))
        if found is not None:
            records.append(CustomModelRecord.model_validate(found[0]))
    return records


def get_model(store: JobStore, tenant: str, name: str) -> tuple[CustomModelRecord, Job]:
    """A model of `tenant` that exists: its record and the COMPLETED job that made it."""
    record = get_record(store, tenant, name)
    if record is None or record.jobId is None:
        raise ModelNotFound(name)
    job = store.get(record.jobId)
    if job.spec.tenant != tenant or job.status.state != JobState.COMPLETED:
        raise ModelNotFound(name)
    return record, job


def jobs_using(store: JobStore, job: Job) -> list[str]:
    """Ids of jobs not yet ended whose base model is this model's artifacts."""
    prefix = model_prefix(job)
    users = []
    for job_id in store.list_active_job_ids():
        try:
            other = store.get(job_id)
        except TuneforgeError:
            continue
        if not other.status.state.is_terminal() and other.spec.baseModelIdentifier == prefix:
            users.append(job_id)
    return users


def delete_model(store: JobStore, tenant: str, name: str) -> None:
    record, job = get_model(store, tenant, name)
    users = jobs_using(store, job)
    if users:
        raise ModelConflict(
            f"custom model '{name}' is the base model of job(s) {', '.join(users)} that have "
            "not ended; stop them or wait for them to end, then delete it"
        )
    store.storage.delete_prefix(parse_s3_uri(model_prefix(job), field="modelIdentifier"))
    release(store, tenant, record.modelName)
