"""A job's fields are declared once: `JobRequest` (jobstore/documents.py) is what the caller
chose, as stored. The create request (`JobCreate`) has exactly its fields, the answer
(`JobPublic`) shows them all, and each survives create -> store -> answer unchanged; the
server's own fields (id, tenant, creation time) are added to the spec, never sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jobstore.documents import (
    DataLocation,
    Integrations,
    JobControl,
    JobRequest,
    JobSpec,
    JobStatus,
    MlflowIntegration,
    Notifications,
    utc_now,
)
from jobstore.store import Job
from service.core.jobs import stored_request
from service.core.schemas import (
    IntegrationsConfig,
    JobCreate,
    JobPublic,
    MlflowConfig,
    NotificationsConfig,
    OutputDataConfig,
    TrainingDataConfig,
    ValidationDataConfig,
)

REQUEST_FIELDS = set(JobRequest.model_fields)

EVERY_FIELD_SET: dict[str, Any] = {
    "jobName": "every-field",
    "customizationType": "CONTINUED_PRE_TRAINING",
    "baseModelIdentifier": "s3://models/base/",
    "trainingDataConfig": {"s3Uri": "s3://data/train.jsonl"},
    "validationDataConfig": {"s3Uri": "s3://data/validation.jsonl"},
    "outputDataConfig": {"s3Uri": "s3://out/"},
    "hyperParameters": {"epochCount": 2, "learningRate": 0.001, "method": "LORA", "loraRank": 4},
    "resources": {"gpus": 2, "nodes": 1, "sharding": "FSDP"},
    "clientRequestToken": "token-1",
    "tags": {"team": "search"},
    "integrations": {"mlflow": {"trackingUri": "http://mlflow:5000", "experimentName": "x"}},
    "notifications": {"webhookUrl": "https://hooks.example.com/x"},
}


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_the_create_request_has_exactly_the_stored_request_fields() -> None:
    assert _fields(JobCreate) == REQUEST_FIELDS
    assert EVERY_FIELD_SET.keys() == REQUEST_FIELDS  # the round trip below sets them all


def test_the_spec_adds_only_the_servers_fields() -> None:
    assert _fields(JobSpec) - REQUEST_FIELDS == {"jobId", "tenant", "createdAt"}


def test_the_answer_shows_every_request_field() -> None:
    assert _fields(JobPublic) >= REQUEST_FIELDS


def test_the_public_nested_shapes_name_the_stored_documents_fields() -> None:
    pairs: list[tuple[type[BaseModel], type[BaseModel]]] = [
        (TrainingDataConfig, DataLocation),
        (ValidationDataConfig, DataLocation),
        (OutputDataConfig, DataLocation),
        (IntegrationsConfig, Integrations),
        (MlflowConfig, MlflowIntegration),
        (NotificationsConfig, Notifications),
    ]
    for public, stored in pairs:
        assert _fields(public) == _fields(stored), public.__name__


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    request = JobCreate.model_validate(body)
    spec = JobSpec(**stored_request(request), jobId="job-1", tenant="acme", createdAt=utc_now())
    status = JobStatus(updatedAt=spec.createdAt)
    public = JobPublic.from_job(Job(spec, status, JobControl()))
    return public.model_dump(mode="json", include=REQUEST_FIELDS)


def test_every_field_survives_create_store_and_answer() -> None:
    expected = JobCreate.model_validate(EVERY_FIELD_SET).model_dump(mode="json")
    assert _answer(EVERY_FIELD_SET) == expected


def test_empty_integrations_are_stored_and_answered_as_none() -> None:
    body = {**EVERY_FIELD_SET, "integrations": {}}
    body.pop("notifications")
    answer = _answer(body)
    assert answer["integrations"] is None
    assert answer["notifications"] is None
