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

from jobstore.documents import JobState
from jobstore.storage import parse_s3_uri
from jobstore.store import Job, JobStore
from service.core.name_claims import ClaimRecord, NameClaims
from service.errors import ModelNotFound, NameConflict, TuneforgeError

MODEL_NAME_PATTERN = r"^([0-9a-zA-Z][_-]?){1,63}$"


class CustomModelRecord(ClaimRecord):
    modelName: str
    jobName: str
    createdAt: str
    tags: dict[str, str] = {}


def model_names(store: JobStore) -> NameClaims[CustomModelRecord]:
    return NameClaims(store, "models", CustomModelRecord, re.compile(MODEL_NAME_PATTERN))


def model_prefix(job: Job) -> str:
    return job.spec.output_prefix + "model/"


def reserve(store: JobStore, tenant: str, record: CustomModelRecord) -> CustomModelRecord:
    """Create the record; return the one that holds the name (ours or an earlier one)."""
    holder, _ = model_names(store).claim(tenant, record.modelName, record)
    return holder


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
    return model_names(store).replace(tenant, holder.modelName, record, holder)


def set_job_id(store: JobStore, tenant: str, name: str, job_id: str) -> None:
    model_names(store).set_job_id(tenant, name, job_id)


def release(store: JobStore, tenant: str, name: str) -> None:
    model_names(store).release(tenant, name)


def list_records(store: JobStore, tenant: str) -> list[CustomModelRecord]:
    return model_names(store).list(tenant)


def get_model(store: JobStore, tenant: str, name: str) -> tuple[CustomModelRecord, Job]:
    """A model of `tenant` that exists: its record and the COMPLETED job that made it."""
    record = model_names(store).get(tenant, name)
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
        raise NameConflict(
            f"custom model '{name}' is the base model of job(s) {', '.join(users)} that have "
            "not ended; stop them or wait for them to end, then delete it"
        )
    store.storage.delete_prefix(parse_s3_uri(model_prefix(job), field="modelIdentifier"))
    release(store, tenant, record.modelName)
