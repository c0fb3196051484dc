"""REST v1: a job's training and validation metric rows (`GET /v1/jobs/{id}/metrics`).

The dashboard draws its loss curves from this; scripts can too. The rows come from the
CSV files in the job's output (service/core/training_metrics.py), so they are as fresh as the
trainer's last upload (every ~10 s while it runs, and at the end).
"""

from __future__ import annotations

from fastapi import APIRouter

from service.core.training_metrics import JobMetrics
from service.faces.http_auth import CurrentTenant
from service.faces.rest.deps import JobsDep
from service.faces.rest.errors import ERROR_RESPONSES
from service.faces.rest.routes.jobs import JobId

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    summary="A job's training and validation metrics, by step",
    description="Every row of the job's step_wise_training_metrics.csv and "
    "validation_metrics.csv uploaded so far, oldest step first. Columns beyond loss and "
    "perplexity (classification scores, or any the trainer adds) are in `metrics`; values "
    "that are not finite numbers are null. Empty lists before the first step.",
)
def get_job_metrics(job_id: JobId, service: JobsDep, caller: CurrentTenant) -> JobMetrics:
    return service.metrics(job_id, tenant=caller.tenant)
