"""Bedrock job names: unique per tenant (Bedrock: per account), each pointing at its job.

    names/<tenant>/<jobName>.json   {jobName, jobId, fingerprint, clientRequestToken,
                            customModelName, roleArn, baseModelIdentifier, createdAt}

Created with If-None-Match before the job, so two creates of one name have one winner;
the job id is filled in (If-Match) once the job exists. It also keeps the Bedrock fields
the native job spec has no place for.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from jobstore.storage import PreconditionFailed, S3Location
from jobstore.store import JobStore

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9+\-.])*$")
_TENANT = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class NameRecord(BaseModel):
    jobName: str
    jobId: str | None = None
    fingerprint: str
    clientRequestToken: str | None = None
    customModelName: str
    roleArn: str
    baseModelIdentifier: str
    customModelTags: dict[str, str] = {}
    createdAt: str


def _location(store: JobStore, tenant: str, name: str) -> S3Location | None:
    if not _JOB_NAME.match(name) or len(name) > 63 or not _TENANT.match(tenant):
        return None
    return S3Location(store.bucket, f"names/{tenant}/{name}.json")


def claim(store: JobStore, tenant: str, record: NameRecord) -> tuple[NameRecord, bool]:
    """Create the record; return the one holding the name and whether it is ours."""
    location = _location(store, tenant, record.jobName)
    assert location is not None, "job names are validated before they get here"
    try:
        store.storage.put_json(location, record.model_dump(mode="json"), if_none_match=True)
        return record, True
    except PreconditionFailed:
        found = get(store, tenant, record.jobName)
        if found is None:  # released in between
            return claim(store, tenant, record)
        return found, False


def set_job_id(store: JobStore, tenant: str, name: str, job_id: str) -> None:
    location = _location(store, tenant, name)
    assert location is not None
    found = store.storage.get_json(location)
    if found is None:
        return
    record = NameRecord.model_validate(found[0])
    if record.jobId is None:
        record.jobId = job_id
        try:
            store.storage.put_json(location, record.model_dump(mode="json"), if_match=found[1])
        except PreconditionFailed:
            pass  # a concurrent retry wrote the same id


def release(store: JobStore, tenant: str, name: str) -> None:
    location = _location(store, tenant, name)
    if location is not None:
        store.storage.delete(location)


def get(store: JobStore, tenant: str, name: str) -> NameRecord | None:
    location = _location(store, tenant, name)
    if location is None:
        return None
    found = store.storage.get_json(location)
    return None if found is None else NameRecord.model_validate(found[0])
