"""Bedrock job names: unique per tenant (Bedrock: per account), each pointing at its job.

    names/<tenant>/<jobName>.json   {jobName, jobId, fingerprint, clientRequestToken,
                            customModelName, roleArn, baseModelIdentifier, createdAt}

Created with If-None-Match before the job, so two creates of one name have one winner;
the job id is filled in (If-Match) once the job exists. It also keeps the Bedrock fields
the native job spec has no place for.
"""

from __future__ import annotations

import re

from jobstore.store import JobStore
from service.core.name_claims import ClaimRecord, NameClaims

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9+\-.])*$")


class NameRecord(ClaimRecord):
    jobName: str
    fingerprint: str
    clientRequestToken: str | None = None
    customModelName: str
    roleArn: str
    baseModelIdentifier: str
    customModelTags: dict[str, str] = {}
    createdAt: str


def job_names(store: JobStore) -> NameClaims[NameRecord]:
    """Bedrock job names: unique per tenant, each record pointing at its job."""
    return NameClaims(store, "names", NameRecord, _JOB_NAME)
