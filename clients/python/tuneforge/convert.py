"""Between the proto messages and the REST API's JSON, both ways.

The REST API's JSON (`POST /v1/jobs` bodies, `GET /v1/jobs/{id}` answers) and the
proto messages carry the same fields under the same names (proto JSON names). These
functions are the one place that turns one into the other: the REST SDK uses them to
give back the same messages as the gRPC client, and the CLI to print the same JSON as
`curl`. (The server maps its own messages, service/faces/grpc/mapping.py; the parity
tests hold both to the same values.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from tuneforge.v1 import fine_tuning_pb2 as pb

TERMINAL_STATES = frozenset({pb.COMPLETED, pb.FAILED, pb.STOPPED})
JobDict = dict[str, Any]


# -- requests ----------------------------------------------------------------------


def create_request(body: Mapping[str, Any] | pb.CreateJobRequest) -> pb.CreateJobRequest:
    """A CreateJobRequest from a REST create body (camelCase JSON) or a request.

    Raises `ValueError` naming the field for a body that does not fit the message
    (an unknown field, a string where a number belongs); range checks are the
    service's.
    """
    if isinstance(body, pb.CreateJobRequest):
        return body
    if not isinstance(body, Mapping):
        raise ValueError(f"a job to create must be a JSON object, not {type(body).__name__}")
    try:
        return json_format.ParseDict(dict(body), pb.CreateJobRequest())
    except json_format.ParseError as error:
        raise ValueError(str(error)) from None


def create_body(request: pb.CreateJobRequest) -> dict[str, Any]:
    """The REST create body for a request: only the fields that are set."""
    return json_format.MessageToDict(request)


def validation_report_from_dict(data: Mapping[str, Any]) -> pb.JobValidationReport:
    """A dry run's report (REST JobValidationReport, camelCase) as the gRPC message."""
    report = pb.JobValidationReport()
    json_format.ParseDict(dict(data), report, ignore_unknown_fields=True)
    return report


# -- timestamps --------------------------------------------------------------------


def timestamp(value: str | None) -> Timestamp | None:
    """An RFC 3339 string (`2025-01-02T03:04:05.678Z`) as a Timestamp; None stays None."""
    if not value:
        return None
    stamp = Timestamp()
    try:
        stamp.FromJsonString(value)
    except ValueError:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        stamp.FromDatetime(parsed)
    return stamp


def timestamp_text(stamp: Timestamp) -> str:
    """The service's own form: UTC, milliseconds (microseconds when finer), `Z`."""
    moment = stamp.ToDatetime(tzinfo=UTC)
    precision = "milliseconds" if stamp.nanos % 1_000_000 == 0 else "microseconds"
    return moment.isoformat(timespec=precision).replace("+00:00", "Z")


def _set_time(message: Any, field: str, value: str | None) -> None:
    stamp = timestamp(value)
    if stamp is not None:
        getattr(message, field).CopyFrom(stamp)


def _time(message: Any, field: str) -> str | None:
    return timestamp_text(getattr(message, field)) if message.HasField(field) else None


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


# -- enums -------------------------------------------------------------------------


def state_name(state: int) -> str:
    """`RUNNING` for pb.RUNNING; a number the client does not know shows as itself."""
    try:
        return pb.JobState.Name(state)
    except ValueError:
        return str(state)


def state_value(state: str | int) -> pb.JobState:
    """pb.RUNNING for `RUNNING` (any case) or for pb.RUNNING itself."""
    if isinstance(state, int):
        return cast(pb.JobState, state)
    try:
        return cast(pb.JobState, pb.JobState.Value(state.upper()))
    except ValueError:
        names = ", ".join(n for n, _ in pb.JobState.items() if n != "JOB_STATE_UNSPECIFIED")
        raise ValueError(f"unknown job state {state!r}; one of {names}") from None


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


# -- jobs --------------------------------------------------------------------------

_HYPER = {
    "epochCount": "epoch_count",
    "batchSize": "batch_size",
    "learningRate": "learning_rate",
    "learningRateWarmupSteps": "learning_rate_warmup_steps",
    "gradientAccumulationSteps": "gradient_accumulation_steps",
    "maxSequenceLength": "max_sequence_length",
    "weightDecay": "weight_decay",
    "seed": "seed",
    "dropout": "dropout",
    "lrScheduler": "lr_scheduler",
    "maxGradNorm": "max_grad_norm",
    "evalIntervalSteps": "eval_interval_steps",
    "checkpointIntervalSteps": "checkpoint_interval_steps",
    "keepCheckpoints": "keep_checkpoints",
    "earlyStoppingPatience": "early_stopping_patience",
    "earlyStoppingThreshold": "early_stopping_threshold",
    "precision": "precision",
    "method": "method",
    "loraRank": "lora_rank",
    "loraAlpha": "lora_alpha",
    "loraDropout": "lora_dropout",
    "packing": "packing",
    "mergeAdapter": "merge_adapter",
    "dpoBeta": "dpo_beta",
}
# A repeated field has no presence: an empty list reads as unset (the per-architecture
# default), as null does in REST's JSON.
_HYPER_LISTS = {"loraTargetModules": "lora_target_modules"}
_PROGRESS = {
    "step": "step",
    "totalSteps": "total_steps",
    "epoch": "epoch",
    "totalEpochs": "total_epochs",
    "trainingLoss": "training_loss",
    "validationLoss": "validation_loss",
    "tokensSeen": "tokens_seen",
    "etaSeconds": "eta_seconds",
    "learningRate": "learning_rate",
    "tokensPerSecond": "tokens_per_second",
    "gpuMemoryBytes": "gpu_memory_bytes",
}
_OUTPUT = {
    "outputS3Uri": "output_s3_uri",
    "modelS3Uri": "model_s3_uri",
    "trainingMetricsS3Uri": "training_metrics_s3_uri",
    "validationMetricsS3Uri": "validation_metrics_s3_uri",
    "checkpointsS3Uri": "checkpoints_s3_uri",
}


def _data_check_dict(progress: pb.Progress) -> dict[str, Any] | None:
    if not progress.HasField("data_check"):
        return None
    check = progress.data_check
    return {
        "phase": check.phase,
        "bytesDone": check.bytes_done,
        "bytesTotal": check.bytes_total,
        "recordsDone": check.records_done,
        "recordsPerSecond": _optional(check, "records_per_second"),
    }


def job_from_dict(data: Mapping[str, Any]) -> pb.Job:
    """A Job message from the REST API's job JSON (`GET /v1/jobs/{id}`)."""
    job = pb.Job(
        job_id=data["jobId"],
        job_name=data["jobName"],
        state=state_value(data["state"]),
        stop_requested=bool(data.get("stopRequested")),
        pause_requested=bool(data.get("pauseRequested")),
        customization_type=data.get("customizationType") or "FINE_TUNING",
        base_model_identifier=data["baseModelIdentifier"],
        tags=data.get("tags") or {},
        attempt=int(data.get("attempt") or 0),
    )
    if data.get("queuePosition") is not None:
        job.queue_position = int(data["queuePosition"])
    for field, name in (
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("startedAt", "started_at"),
        ("endedAt", "ended_at"),
    ):
        _set_time(job, name, data.get(field))
    job.training_data_config.s3_uri = data["trainingDataConfig"]["s3Uri"]
    if data.get("validationDataConfig"):
        job.validation_data_config.s3_uri = data["validationDataConfig"]["s3Uri"]
    job.output_data_config.s3_uri = data["outputDataConfig"]["s3Uri"]
    job.hyper_parameters.SetInParent()
    for key, value in (data.get("hyperParameters") or {}).items():
        if key in _HYPER and value is not None:
            setattr(job.hyper_parameters, _HYPER[key], value)
        elif key in _HYPER_LISTS and value:
            getattr(job.hyper_parameters, _HYPER_LISTS[key]).extend(value)
    if data.get("clientRequestToken") is not None:
        job.client_request_token = data["clientRequestToken"]
    progress = data.get("progress") or {}
    job.progress.SetInParent()
    for key, name in _PROGRESS.items():
        if progress.get(key) is not None:
            setattr(job.progress, name, progress[key])
    _set_time(job.progress, "first_step_at", progress.get("firstStepAt"))
    job.progress.validation_metrics.update(progress.get("validationMetrics") or {})
    check = progress.get("dataCheck")
    if check:
        job.progress.data_check.CopyFrom(
            pb.DataCheck(
                phase=check["phase"],
                bytes_done=check.get("bytesDone") or 0,
                bytes_total=check.get("bytesTotal") or 0,
                records_done=check.get("recordsDone") or 0,
            )
        )
        if check.get("recordsPerSecond") is not None:
            job.progress.data_check.records_per_second = check["recordsPerSecond"]
    if data.get("failure"):
        failure = data["failure"]
        job.failure.CopyFrom(pb.Failure(reason=failure["reason"], message=failure["message"]))
    if (data.get("notifications") or {}).get("webhookUrl"):
        job.notifications.webhook_url = data["notifications"]["webhookUrl"]
    mlflow = (data.get("integrations") or {}).get("mlflow")
    if mlflow:
        job.integrations.mlflow.tracking_uri = mlflow["trackingUri"]
        job.integrations.mlflow.experiment_name = mlflow.get("experimentName") or ""
    resources = data.get("resources")
    if resources:
        job.resources.CopyFrom(
            pb.Resources(
                gpus=resources["gpus"], nodes=resources["nodes"], sharding=resources["sharding"]
            )
        )
    for key, name in _OUTPUT.items():
        setattr(job.output, name, (data.get("output") or {}).get(key, ""))
    entries = [
        pb.StateTime(state=state_value(state), time=timestamp(when))
        for state, when in (data.get("stateTimes") or {}).items()
    ]
    # In the order the job entered them (the stored document's keys are sorted by name).
    entries.sort(key=lambda entry: (entry.time.seconds, entry.time.nanos))
    job.state_times.extend(entries)
    if data.get("dataSummary"):
        job.data_summary.CopyFrom(_data_summary_message(data["dataSummary"]))
    return job


def _data_summary_message(summary: Mapping[str, Any]) -> pb.DataSummary:
    message = pb.DataSummary(
        training_records=summary["trainingRecords"],
        validation_records=summary.get("validationRecords") or 0,
        truncated_records=summary.get("truncatedRecords") or 0,
        label_distribution=summary.get("labelDistribution") or {},
    )
    if summary.get("tokenLengths"):
        message.token_lengths.CopyFrom(pb.TokenLengths(**summary["tokenLengths"]))
    return message


def _data_summary_dict(job: pb.Job) -> dict[str, Any] | None:
    """REST's dataSummary: null until the data is checked."""
    if not job.HasField("data_summary"):
        return None
    summary = job.data_summary
    lengths = summary.token_lengths
    return {
        "trainingRecords": summary.training_records,
        "validationRecords": summary.validation_records,
        "tokenLengths": (
            {"p50": lengths.p50, "p90": lengths.p90, "p99": lengths.p99, "max": lengths.max}
            if summary.HasField("token_lengths")
            else None
        ),
        "truncatedRecords": summary.truncated_records,
        "labelDistribution": dict(summary.label_distribution.items()),
    }


def job_to_dict(job: pb.Job) -> JobDict:
    """The REST API's job JSON for a Job message: same keys, same order, same values."""
    hyper = job.hyper_parameters
    progress = job.progress
    return {
        "jobId": job.job_id,
        "jobName": job.job_name,
        "state": state_name(job.state),
        "stopRequested": job.stop_requested,
        "pauseRequested": job.pause_requested,
        "createdAt": _time(job, "created_at"),
        "updatedAt": _time(job, "updated_at"),
        "startedAt": _time(job, "started_at"),
        "endedAt": _time(job, "ended_at"),
        "customizationType": _enum_name(pb.CustomizationType, job.customization_type),
        "baseModelIdentifier": job.base_model_identifier,
        "trainingDataConfig": {"s3Uri": job.training_data_config.s3_uri},
        "validationDataConfig": (
            {"s3Uri": job.validation_data_config.s3_uri}
            if job.HasField("validation_data_config")
            else None
        ),
        "outputDataConfig": {"s3Uri": job.output_data_config.s3_uri},
        "hyperParameters": _hyper_parameters_dict(hyper),
        "tags": dict(sorted(job.tags.items())),
        "clientRequestToken": _optional(job, "client_request_token"),
        "progress": {
            "step": progress.step,
            "totalSteps": _optional(progress, "total_steps"),
            "epoch": progress.epoch,
            "totalEpochs": _optional(progress, "total_epochs"),
            "trainingLoss": _optional(progress, "training_loss"),
            "trainingTokenAccuracy": _optional(progress, "training_token_accuracy"),
            "validationLoss": _optional(progress, "validation_loss"),
            "tokensSeen": progress.tokens_seen,
            "etaSeconds": _optional(progress, "eta_seconds"),
            "firstStepAt": _time(progress, "first_step_at"),
            "validationMetrics": dict(sorted(progress.validation_metrics.items())),
            "learningRate": _optional(progress, "learning_rate"),
            "tokensPerSecond": _optional(progress, "tokens_per_second"),
            "gpuMemoryBytes": _optional(progress, "gpu_memory_bytes"),
            "dataCheck": _data_check_dict(progress),
        },
        "failure": (
            {
                "reason": _enum_name(pb.FailureReason, job.failure.reason),
                "message": job.failure.message,
            }
            if job.HasField("failure")
            else None
        ),
        "output": {key: getattr(job.output, name) for key, name in _OUTPUT.items()},
        "attempt": job.attempt,
        "queuePosition": _optional(job, "queue_position"),
        "stateTimes": {state_name(entry.state): _time(entry, "time") for entry in job.state_times},
        "dataSummary": _data_summary_dict(job),
        "integrations": (
            {
                "mlflow": {
                    "trackingUri": job.integrations.mlflow.tracking_uri,
                    "experimentName": job.integrations.mlflow.experiment_name or "tuneforge",
                }
            }
            if job.integrations.HasField("mlflow")
            else None
        ),
        "notifications": (
            {"webhookUrl": job.notifications.webhook_url} if job.HasField("notifications") else None
        ),
        "resources": {
            "gpus": job.resources.gpus if job.resources.HasField("gpus") else 0,
            "nodes": job.resources.nodes if job.resources.HasField("nodes") else 1,
            "sharding": job.resources.sharding if job.resources.HasField("sharding") else "DDP",
        },
    }


def _hyper_parameters_dict(hyper: pb.HyperParameters) -> dict[str, Any]:
    """REST's hyperParameters: every field, null where unset (as REST shows an unset
    dropout or loraTargetModules)."""
    values: dict[str, Any] = {key: _optional(hyper, name) for key, name in _HYPER.items()}
    for key, name in _HYPER_LISTS.items():
        values[key] = list(getattr(hyper, name)) or None
    return values


def is_terminal(job: pb.Job) -> bool:
    return job.state in TERMINAL_STATES


def same_view(a: pb.Job, b: pb.Job) -> bool:
    """Equal but for `updated_at` (which moves with every trainer heartbeat)."""
    left, right = pb.Job(), pb.Job()
    left.CopyFrom(a)
    right.CopyFrom(b)
    left.ClearField("updated_at")
    right.ClearField("updated_at")
    return left == right


# -- events, checkpoints -------------------------------------------------------------


def event_from_dict(data: Mapping[str, Any]) -> pb.JobEvent:
    event = pb.JobEvent(
        sequence=int(data["sequence"]),
        type=data["type"],
        message=data["message"],
        state=state_value(data["state"]) if data.get("state") else pb.JOB_STATE_UNSPECIFIED,
    )
    _set_time(event, "time", data.get("time"))
    return event


def event_to_dict(event: pb.JobEvent) -> dict[str, Any]:
    return {
        "sequence": event.sequence,
        "time": _time(event, "time"),
        "type": event.type,
        "message": event.message,
        "state": state_name(event.state) if event.state else None,
    }


def checkpoint_from_dict(data: Mapping[str, Any]) -> pb.Checkpoint:
    checkpoint = pb.Checkpoint(
        step=int(data["step"]),
        s3_uri=data["s3Uri"],
        epoch=int(data.get("epoch") or 0),
        validation_metrics=data.get("validationMetrics") or {},
    )
    _set_time(checkpoint, "committed_at", data.get("committedAt"))
    for key, name in (
        ("trainingLoss", "training_loss"),
        ("validationLoss", "validation_loss"),
        ("trainingTokenAccuracy", "training_token_accuracy"),
    ):
        if data.get(key) is not None:
            setattr(checkpoint, name, float(data[key]))
    return checkpoint


def checkpoint_to_dict(checkpoint: pb.Checkpoint) -> dict[str, Any]:
    return {
        "step": checkpoint.step,
        "s3Uri": checkpoint.s3_uri,
        "committedAt": _time(checkpoint, "committed_at"),
        "epoch": checkpoint.epoch or None,
        "trainingLoss": _optional(checkpoint, "training_loss"),
        "validationLoss": _optional(checkpoint, "validation_loss"),
        "validationMetrics": dict(checkpoint.validation_metrics),
        "trainingTokenAccuracy": _optional(checkpoint, "training_token_accuracy"),
    }
