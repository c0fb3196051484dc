"""The gRPC face's own mapping from the core's models to its messages (pure logic).

The parity tests compare whole answers against REST on a real server; these cover what a
demo job never produces: losses that overflowed, and every enum value the core has.
"""

from __future__ import annotations

import math
import typing

import pytest
from tuneforge.v1 import fine_tuning_pb2 as pb

from jobstore.documents import (
    DataLocation,
    Failure,
    FailureReason,
    HyperParameters,
    JobControl,
    JobSpec,
    JobState,
    JobStatus,
    utc_now,
)
from jobstore.store import Job
from service.core.jobs import Checkpoint
from service.core.schemas import JobCreate
from service.faces.grpc.mapping import checkpoint_message, job_message


def _job(**status: typing.Any) -> Job:
    now = utc_now()
    spec = JobSpec(
        jobId="0p5v2m8x3k7qa1b2",
        jobName="mapping",
        createdAt=now,
        baseModelIdentifier="s3://models/base/",
        trainingDataConfig=DataLocation(s3Uri="s3://data/train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://out/"),
        hyperParameters=HyperParameters(),
    )
    return Job(spec, JobStatus(updatedAt=now, **status), JobControl())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_loss_that_is_not_finite_is_sent_as_it_is(value: float) -> None:
    job = _job(progress={"step": 3, "trainingLoss": value})
    sent = job_message(job).progress.training_loss
    assert (math.isnan(sent) and math.isnan(value)) or sent == value

    checkpoint = Checkpoint(step=3, s3Uri="s3://out/checkpoints/step-3/", trainingLoss=value)
    sent = checkpoint_message(checkpoint).training_loss
    assert (math.isnan(sent) and math.isnan(value)) or sent == value


def test_token_accuracy_goes_out_beside_the_losses() -> None:
    job = _job(
        progress={
            "step": 3,
            "trainingTokenAccuracy": 0.25,
            "validationMetrics": {"token_accuracy": 0.5},
        }
    )
    progress = job_message(job).progress
    assert progress.training_token_accuracy == 0.25
    assert dict(progress.validation_metrics) == {"token_accuracy": 0.5}

    checkpoint = Checkpoint(
        step=3, s3Uri="s3://out/checkpoints/step-3/", trainingTokenAccuracy=0.75
    )
    assert checkpoint_message(checkpoint).training_token_accuracy == 0.75


def test_every_job_state_has_its_proto_value() -> None:
    for state in JobState:
        assert job_message(_job(state=state)).state == pb.JobState.Value(state.value)


def test_every_failure_reason_has_its_proto_value() -> None:
    for reason in FailureReason:
        failed = _job(state=JobState.FAILED, failure=Failure(reason=reason, message="why"))
        assert job_message(failed).failure.reason == pb.FailureReason.Value(reason.value)


def test_every_customization_type_has_its_proto_value() -> None:
    annotation = JobCreate.model_fields["customizationType"].annotation
    for kind in typing.get_args(annotation):
        job = _job()
        job.spec.customizationType = kind
        assert job_message(job).customization_type == pb.CustomizationType.Value(kind)
