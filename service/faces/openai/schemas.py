"""OpenAI's request and answer shapes, field for field as the `openai` SDK's own types
(`openai.types.fine_tuning`, `openai.types.file_object`, `openai.types.model`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Request):
    batch_size: Auto | Annotated[int, Field(ge=1, le=1024)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] | None = None
    n_epochs: Auto | Annotated[int, Field(ge=1, le=100)] | None = None


class DpoHyperparameters(Hyperparameters):
    # The native hyperParameters.dpoBeta's range.
    beta: Auto | Annotated[float, Field(gt=0, le=10)] | None = None


class SupervisedMethod(_Request):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Request):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(_Request):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    method: Method | None = None
    # Deprecated by OpenAI in favour of method.supervised.hyperparameters; still taken.
    hyperparameters: Hyperparameters | None = None
    integrations: list[dict[str, Any]] | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer of the face: `{"error": {message, type, param, code}}`."""

    error: ErrorDetail


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int


class JobDpoHyperparameters(JobHyperparameters):
    beta: float


class JobSupervisedMethod(BaseModel):
    hyperparameters: JobHyperparameters


class JobDpoMethod(BaseModel):
    hyperparameters: JobDpoHyperparameters


class JobMethod(BaseModel):
    """`supervised` set for a supervised job, `dpo` for a DPO (PREFERENCE) one."""

    type: Literal["supervised", "dpo"]
    supervised: JobSupervisedMethod | None = None
    dpo: JobDpoMethod | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[
        "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
    ]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: JobMethod


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # DPO jobs: the evaluation's preference metrics (tuneforge's own, beside OpenAI's).
    valid_reward_accuracy: float | None = None
    valid_reward_margin: float | None = None
    valid_chosen_reward: float | None = None
    valid_rejected_reward: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class Page(BaseModel):
    """OpenAI's list answer: `data`, and `has_more` for the cursor pages (`after`)."""

    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
