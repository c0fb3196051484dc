"""Proto messages <-> the core's shapes. Nothing else in the gRPC face converts.

Requests become the same pydantic `JobCreate` that REST validates, from the same JSON
(proto JSON names are REST's names), so both faces accept and refuse the same requests
and name a bad field the same way. Answers are the core's models (`JobPublic`, events,
checkpoints) parsed into their messages by the same names; the one field whose shape
differs is `state_times` (REST: a map from state to time; proto: a list in the order the
job entered them). A field the message lacks is left out, so the face answers with what
its contract has; tests/faces/grpc/test_parity.py holds both faces to the same values, and
tests/faces/grpc/test_mapping.py every enum value of the core to a name the proto knows
(an unknown enum name would otherwise be sent as unspecified).
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format
from tuneforge.v1 import fine_tuning_pb2 as pb

from jobstore.documents import JobEvent, JobState, JobValidationReport
from jobstore.store import Job
from service.core.jobs import Checkpoint
from service.core.schemas import JobCreate, JobPublic
from service.errors import InvalidArgument


def job_create(request: pb.CreateJobRequest) -> JobCreate:
    """Validate a CreateJobRequest exactly as REST validates its body.

    Unset fields are left out of the body, so a missing jobName reads "Field required"
    as it does over REST. `validate_only` is the face's, not the job's (as REST's
    validateOnly). Raises pydantic's ValidationError.
    """
    body = json_format.MessageToDict(request)
    body.pop("validateOnly", None)
    return JobCreate.model_validate(body)


def validation_report_message(report: JobValidationReport) -> pb.JobValidationReport:
    return _message(report.model_dump(mode="json"), pb.JobValidationReport())


def _for_proto(value: Any) -> Any:
    # Proto fields have no null: an unset field is left out (optional and message
    # fields then read as absent, as REST's null does). A loss that overflowed is a
    # float the proto carries but proto JSON spells as a string.
    if isinstance(value, dict):
        return {key: _for_proto(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_for_proto(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _message(data: dict[str, Any], message: Any) -> Any:
    json_format.ParseDict(_for_proto(data), message, ignore_unknown_fields=True)
    return message


def job_message(job: Job) -> pb.Job:
    public = JobPublic.from_job(job).model_dump(mode="json")
    state_times = public.pop("stateTimes")
    message = _message(public, pb.Job())
    # Proto3 has no presence for these two, but every answer carries them (defaults
    # filled in, progress zero before the first step), as REST's do.
    message.hyper_parameters.SetInParent()
    message.progress.SetInParent()
    entries = [
        _message({"state": state, "time": when}, pb.StateTime())
        for state, when in state_times.items()
    ]
    # In the order the job entered them (the stored document's keys are sorted by name).
    entries.sort(key=lambda entry: (entry.time.seconds, entry.time.nanos))
    message.state_times.extend(entries)
    return message


def state_filter(state: int) -> JobState | None:
    if state == pb.JOB_STATE_UNSPECIFIED:
        return None
    name = pb.JobState.Name(state) if state in pb.JobState.values() else str(state)
    if name not in JobState.__members__:
        raise InvalidArgument(f"state {state} is not a job state", field="state")
    return JobState(name)


def event_message(event: JobEvent) -> pb.JobEvent:
    return _message(event.model_dump(mode="json"), pb.JobEvent())


def checkpoint_message(checkpoint: Checkpoint) -> pb.Checkpoint:
    return _message(checkpoint.model_dump(mode="json"), pb.Checkpoint())
