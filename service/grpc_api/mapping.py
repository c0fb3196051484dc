"""Proto messages <-> the native API's shapes. Nothing else in the gRPC edge converts.

Requests become the same pydantic `JobCreate` that REST validates, from the same JSON
(proto JSON names are REST's names), so both faces accept and refuse the same
requests and name a bad field the same way. Answers are built from `JobPublic`, the
model every REST read returns, through the client package's one converter.
"""

from __future__ import annotations

from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb

from jobstore.documents import JobEvent, JobState
from jobstore.store import Job
from service.core.jobs import Checkpoint
from service.errors import InvalidArgument
from service.schemas import JobCreate, JobPublic


def job_create(request: pb.CreateJobRequest) -> JobCreate:
    """Validate a CreateJobRequest exactly as REST validates its body.

    Unset fields are left out of the body, so a missing jobName reads "Field required"
    as it does over REST. Raises pydantic's ValidationError.
    """
    return JobCreate.model_validate(convert.create_body(request))


def job_message(job: Job) -> pb.Job:
    return convert.job_from_dict(JobPublic.from_job(job).model_dump(mode="json"))


def state_filter(state: int) -> JobState | None:
    if state == pb.JOB_STATE_UNSPECIFIED:
        return None
    name = convert.state_name(state)
    if name not in JobState.__members__:
        raise InvalidArgument(f"state {state} is not a job state", field="state")
    return JobState(name)


def event_message(event: JobEvent) -> pb.JobEvent:
    return convert.event_from_dict(event.model_dump(mode="json"))


def checkpoint_message(checkpoint: Checkpoint) -> pb.Checkpoint:
    return convert.checkpoint_from_dict(checkpoint.model_dump(mode="json"))
