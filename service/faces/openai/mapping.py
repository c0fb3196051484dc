"""OpenAI's shapes <-> the core's. Nothing else in the OpenAI face converts.

A job made here is an ordinary job: `suffix` is its name, `metadata` its tags, the
model and the files are resolved to their s3:// folders and objects, and its outputs go
to the tenant's own files folder (`<files_bucket>/<tenant>/outputs/`). Read back, any
job (made through any face) is shown in OpenAI's shape: a data URI that is one of the
tenant's files shows as its file id, a base model as its catalog name.

Learning rate: OpenAI's `learning_rate_multiplier` multiplies the service's default
learning rate (HyperParameters.learningRate), and is shown back as the job's rate over
that default.

Methods: `supervised` is a FINE_TUNING job; `dpo` a PREFERENCE job, its `beta` the job's
dpoBeta (`"auto"`: the default). Read back, a PREFERENCE job shows as `dpo`, any other
as `supervised`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from jobstore.documents import FailureReason, HyperParameters, JobEvent, JobState
from jobstore.store import Job
from service.core.files import FileStore
from service.core.jobs import Checkpoint
from service.core.model_catalog import ModelCatalog
from service.core.schemas import JobCreate
from service.core.training_metrics import JobMetrics
from service.errors import FileNotFound, InvalidArgument
from service.faces.openai.schemas import (
    CheckpointMetrics,
    DpoHyperparameters,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    JobDpoHyperparameters,
    JobDpoMethod,
    JobError,
    JobHyperparameters,
    JobMethod,
    JobSupervisedMethod,
)

DEFAULT_LEARNING_RATE = HyperParameters.model_fields["learningRate"].default
DEFAULT_SUFFIX = "ft"
RESULT_FILE_PREFIX = "file-result-"
# The trainer's name for the share of target tokens predicted right (OpenAI's
# `mean_token_accuracy`), in its metrics columns and validationMetrics.
TOKEN_ACCURACY = "token_accuracy"
# What a PREFERENCE (DPO) job's trainer writes instead, in its metrics columns and
# validationMetrics; shown as `train_<name>` / `valid_<name>`.
PREFERENCE_METRICS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
PREFERENCE = "PREFERENCE"
# OpenAI's methods -> the customization type of the job each makes.
METHOD_TYPES = {"supervised": "FINE_TUNING", "dpo": PREFERENCE}

STATUS = {
    JobState.QUEUED: "queued",
    JobState.VALIDATING: "validating_files",
    JobState.RUNNING: "running",
    # A cancel cannot be taken back: the job shows as cancelled at once.
    JobState.STOPPING: "cancelled",
    JobState.STOPPED: "cancelled",
    JobState.COMPLETED: "succeeded",
    JobState.FAILED: "failed",
    JobState.PAUSED: "paused",
}


def unix_seconds(text: str | None) -> int | None:
    if not text:
        return None
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _hyper_parameters(request: FineTuningJobCreate) -> dict[str, Any]:
    chosen = request.hyperparameters or Hyperparameters()
    method = request.method
    if method is not None and method.supervised is not None:
        chosen = method.supervised.hyperparameters or chosen
    if method is not None and method.dpo is not None:
        chosen = method.dpo.hyperparameters or chosen
    hyper: dict[str, Any] = {}
    if isinstance(chosen, DpoHyperparameters) and isinstance(chosen.beta, float | int):
        hyper["dpoBeta"] = chosen.beta
    if isinstance(chosen.n_epochs, int):
        hyper["epochCount"] = chosen.n_epochs
    if isinstance(chosen.batch_size, int):
        hyper["batchSize"] = chosen.batch_size
    if isinstance(chosen.learning_rate_multiplier, float | int):
        hyper["learningRate"] = DEFAULT_LEARNING_RATE * chosen.learning_rate_multiplier
    if request.seed is not None:
        hyper["seed"] = request.seed
    return hyper


def job_create(
    request: FineTuningJobCreate,
    *,
    tenant: str,
    files: FileStore,
    catalog: ModelCatalog,
    idempotency_key: str | None,
) -> JobCreate:
    """The native create for an OpenAI one. Raises InvalidArgument naming OpenAI's
    parameter, or pydantic's ValidationError (the face maps both)."""
    method = request.method
    if method is not None and method.type not in METHOD_TYPES:
        raise InvalidArgument(
            f"method '{method.type}' is not offered yet; use 'supervised' or 'dpo'",
            field="method.type",
        )
    if method is not None:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != method.type and getattr(method, other) is not None:
                raise InvalidArgument(
                    f"method.{other} is given with method.type '{method.type}'; give "
                    f"method.{method.type} instead",
                    field=f"method.{other}",
                )
    if request.integrations:
        raise InvalidArgument(
            "integrations (Weights and Biases) are not offered; MLflow tracking is, through "
            "the native API (integrations.mlflow)",
            field="integrations",
        )
    body: dict[str, Any] = {
        "jobName": request.suffix or DEFAULT_SUFFIX,
        "baseModelIdentifier": catalog.base_model_uri(tenant, request.model),
        "trainingDataConfig": {
            "s3Uri": _file_uri(files, tenant, request.training_file, "training_file")
        },
        "outputDataConfig": {"s3Uri": f"s3://{files.files_bucket}/{tenant}/outputs/"},
        "customizationType": METHOD_TYPES[method.type] if method is not None else "FINE_TUNING",
        "hyperParameters": _hyper_parameters(request),
        "tags": request.metadata or {},
    }
    if request.validation_file is not None:
        uri = _file_uri(files, tenant, request.validation_file, "validation_file")
        body["validationDataConfig"] = {"s3Uri": uri}
    if idempotency_key is not None:
        body["clientRequestToken"] = idempotency_key
    return JobCreate.model_validate(body)


def _file_uri(files: FileStore, tenant: str, file_id: str, field: str) -> str:
    try:
        return files.uri(tenant, file_id)
    except FileNotFound:
        raise InvalidArgument(f"{field}: no file with id '{file_id}'", field=field) from None


def _file_or_uri(files: FileStore, tenant: str, uri: str | None) -> str | None:
    if uri is None:
        return None
    return files.file_id_of(tenant, uri) or uri


def _error(job: Job, files: FileStore) -> JobError | None:
    """The failure, with a data file that is one of the tenant's uploads named by its id
    (`file-...:2: missing "completion"`), as the caller knows it."""
    failure = job.status.failure
    if failure is None:
        return None
    message, param = failure.message, None
    spec = job.spec
    data = [("training_file", spec.trainingDataConfig.s3Uri)]
    if spec.validationDataConfig is not None:
        data.append(("validation_file", spec.validationDataConfig.s3Uri))
    for field, uri in data:
        file_id = files.file_id_of(spec.tenant, uri)
        if uri in message and failure.reason == FailureReason.DATA_VALIDATION:
            param = param or field
        if file_id is not None:
            message = message.replace(uri, file_id)
    return JobError(code=failure.reason.value.lower(), message=message, param=param)


def fine_tuning_job(job: Job, *, files: FileStore, catalog: ModelCatalog) -> FineTuningJob:
    spec, status = job.spec, job.status
    state = status.state
    if job.control.stopRequested and not state.is_terminal():
        state = JobState.STOPPING
    hyper = spec.hyperParameters
    hyperparameters = JobHyperparameters(
        batch_size=hyper.batchSize,
        learning_rate_multiplier=hyper.learningRate / DEFAULT_LEARNING_RATE,
        n_epochs=hyper.epochCount,
    )
    progress = status.progress
    estimated_finish = None
    if state == JobState.RUNNING and progress.etaSeconds is not None:
        estimated_finish = int(time.time() + progress.etaSeconds)
    completed = state == JobState.COMPLETED
    created_at = unix_seconds(spec.createdAt)
    assert created_at is not None
    return FineTuningJob(
        id=spec.jobId,
        created_at=created_at,
        error=_error(job, files),
        fine_tuned_model=catalog.fine_tuned_name(job) if completed else None,
        finished_at=unix_seconds(status.endedAt) if state.is_terminal() else None,
        hyperparameters=hyperparameters,
        model=catalog.base_name(spec.baseModelIdentifier),
        organization_id=spec.tenant,
        result_files=[RESULT_FILE_PREFIX + spec.jobId] if completed else [],
        seed=hyper.seed,
        status=STATUS[state],  # type: ignore[arg-type]
        trained_tokens=progress.tokensSeen if completed else None,
        training_file=_file_or_uri(files, spec.tenant, spec.trainingDataConfig.s3Uri) or "",
        validation_file=_file_or_uri(
            files,
            spec.tenant,
            spec.validationDataConfig.s3Uri if spec.validationDataConfig else None,
        ),
        estimated_finish=estimated_finish,
        metadata=spec.tags or None,
        method=_method(spec.customizationType, hyperparameters, hyper),
    )


def _method(
    customization_type: str, hyperparameters: JobHyperparameters, hyper: HyperParameters
) -> JobMethod:
    if customization_type == PREFERENCE:
        dpo = JobDpoHyperparameters(**hyperparameters.model_dump(), beta=hyper.dpoBeta)
        return JobMethod(type="dpo", dpo=JobDpoMethod(hyperparameters=dpo))
    return JobMethod(
        type="supervised", supervised=JobSupervisedMethod(hyperparameters=hyperparameters)
    )


# -- events and checkpoints ------------------------------------------------------------


def message_event(job_id: str, event: JobEvent) -> FineTuningJobEvent:
    failed = event.state == JobState.FAILED
    return FineTuningJobEvent(
        id=f"ftevent-{job_id}-{event.sequence}",
        created_at=unix_seconds(event.time) or 0,
        level="error" if failed else "info",
        message=event.message,
        type="message",
        data={"state": event.state.value} if event.state is not None else None,
    )


def metrics_events(job: Job, metrics: JobMetrics) -> list[FineTuningJobEvent]:
    """One `metrics` event per logged step, with the step's metrics in `data`. The
    trainer logs no time per step: a step's time is placed between the first step and the
    job's last update, in proportion to its step number."""
    first = unix_seconds(job.status.progress.firstStepAt)
    last = unix_seconds(job.status.endedAt or job.status.updatedAt) or first
    total = job.status.progress.totalSteps or max((r.step for r in metrics.training), default=1)
    validation = {row.step: row for row in metrics.validation}
    events = []
    for row in metrics.training:
        when = (
            first
            if first is None or last is None
            else first + (last - first) * row.step // max(total, 1)
        )
        data: dict[str, Any] = {
            "step": row.step,
            "total_steps": total,
            "train_loss": row.trainingLoss,
        }
        if row.metrics.get(TOKEN_ACCURACY) is not None:
            data["train_mean_token_accuracy"] = row.metrics[TOKEN_ACCURACY]
        data.update(_preference_metrics("train", row.metrics))
        evaluated = validation.get(row.step)
        if evaluated is not None:
            data["valid_loss"] = evaluated.validationLoss
            if evaluated.metrics.get(TOKEN_ACCURACY) is not None:
                data["valid_mean_token_accuracy"] = evaluated.metrics[TOKEN_ACCURACY]
            data.update(_preference_metrics("valid", evaluated.metrics))
        loss = "n/a" if row.trainingLoss is None else f"{row.trainingLoss:.4f}"
        events.append(
            FineTuningJobEvent(
                id=f"ftevent-{job.spec.jobId}-step-{row.step}",
                created_at=when or 0,
                level="info",
                message=f"Step {row.step}/{total}: training loss={loss}",
                type="metrics",
                data=data,
            )
        )
    return events


def _preference_metrics(split: str, metrics: dict[str, float | None]) -> dict[str, float]:
    """A DPO job's reward metrics of one row, as `<split>_<name>` (none for other jobs)."""
    return {
        f"{split}_{name}": value
        for name in PREFERENCE_METRICS
        if (value := metrics.get(name)) is not None
    }


def checkpoint(job: Job, found: Checkpoint, fine_tuned_name: str) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{job.spec.jobId}-{found.step}",
        created_at=unix_seconds(found.committedAt) or 0,
        fine_tuned_model_checkpoint=f"{fine_tuned_name}:ckpt-step-{found.step}",
        fine_tuning_job_id=job.spec.jobId,
        metrics=CheckpointMetrics(
            step=found.step,
            train_loss=found.trainingLoss,
            train_mean_token_accuracy=found.trainingTokenAccuracy,
            valid_loss=found.validationLoss,
            valid_mean_token_accuracy=found.validationMetrics.get(TOKEN_ACCURACY),
            **_preference_metrics("valid", dict(found.validationMetrics)),
        ),
        step_number=found.step,
    )
