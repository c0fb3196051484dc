"""Request and response shapes of the native API (REST v1; gRPC maps to the same).

`JobCreate` is what a caller sends; `JobPublic` is what every read returns. Both are
plain pydantic models with no web framework in sight, so the core can take and give
them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from jobstore.documents import (
    DataSummary,
    FailureReason,
    HyperParameters,
    JobRequest,
    JobResources,
    JobState,
    Progress,
)
from jobstore.storage import parse_s3_uri
from jobstore.store import Job
from service.errors import InvalidArgument

_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9+.])*$"
_TOKEN_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$"
# A module name as peft matches it: a Python identifier, or a dotted path of them
# ("q_proj", "self_attn.q_proj", "layers.0.mlp"); a numeric segment is a layer index.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_LORA_ONLY = ("loraRank", "loraAlpha", "loraDropout", "loraTargetModules", "mergeAdapter")
_PREFERENCE_ONLY = ("dpoBeta",)


def _checked_uri(value: str, field: str, *, folder: bool) -> str:
    try:
        location = parse_s3_uri(value, field=field)
    except InvalidArgument as error:
        raise ValueError(error.message) from None
    if not folder and (not location.key or location.key.endswith("/")):
        raise ValueError(f"{field} must name an object (a .jsonl file), not a folder")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingDataConfig(_Request):
    s3Uri: Annotated[
        str,
        Field(
            description="s3:// URI of a JSONL file, one {prompt, completion} object a line.",
            examples=["s3://demo/datasets/sample-train.jsonl"],
        ),
    ]

    @field_validator("s3Uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _checked_uri(value, "s3Uri", folder=False)


class ValidationDataConfig(TrainingDataConfig):
    pass


class OutputDataConfig(_Request):
    s3Uri: Annotated[
        str,
        Field(
            description="s3:// prefix under which the job writes "
            "model-customization-job-<id>/ (metrics, checkpoints, model).",
            examples=["s3://demo/output/"],
        ),
    ]

    @field_validator("s3Uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _checked_uri(value, "s3Uri", folder=True)


class NotificationsConfig(_Request):
    webhookUrl: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="http(s) URL that gets a signed JSON POST when the job ends "
            "(COMPLETED, FAILED or STOPPED); its host must be one the operator allowed "
            "(TUNEFORGE_WEBHOOK_ALLOWED_HOSTS). Signature: docs/operating.md, Monitoring.",
            examples=["https://hooks.example.com/tuneforge"],
        ),
    ]


class MlflowConfig(_Request):
    trackingUri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="http(s) URL of an MLflow tracking server; its host must be one the "
            "operator allowed (TUNEFORGE_MLFLOW_ALLOWED_HOSTS). The trainer logs the "
            "hyperparameters, per-step metrics and the final model's location to a run "
            "named after the job.",
            examples=["http://mlflow.internal:5000"],
        ),
    ]
    experimentName: Annotated[
        str,
        Field(
            min_length=1,
            max_length=256,
            description="The MLflow experiment (created if missing).",
        ),
    ] = "tuneforge"


class IntegrationsConfig(_Request):
    mlflow: MlflowConfig | None = None


class JobCreate(_Request):
    """A fine-tuning job to create."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jobName": "demo-1",
                    "baseModelIdentifier": "s3://demo/models/tiny-llama/",
                    "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
                    "validationDataConfig": {"s3Uri": "s3://demo/datasets/sample-validation.jsonl"},
                    "outputDataConfig": {"s3Uri": "s3://demo/output/"},
                    "hyperParameters": {"epochCount": 3, "learningRate": 0.003},
                    "clientRequestToken": "demo-1-attempt-1",
                }
            ]
        },
    )

    jobName: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=_NAME_PATTERN,
            description="A name for the job: letters, digits, '-', '+', '.'; 1-63 characters.",
        ),
    ]
    baseModelIdentifier: Annotated[
        str,
        Field(
            description="s3:// prefix of a Hugging Face-format model directory "
            "(config.json, *.safetensors, tokenizer files).",
            examples=["s3://demo/models/tiny-llama/"],
        ),
    ]
    customizationType: Annotated[
        Literal["FINE_TUNING", "CONTINUED_PRE_TRAINING", "CLASSIFICATION", "PREFERENCE"],
        Field(
            description="FINE_TUNING: instruction tuning on {prompt, completion} pairs; "
            "loss on the completion only. CONTINUED_PRE_TRAINING: "
            "domain adaptation on {input} or {text} documents, long ones split into "
            "maxSequenceLength chunks. CLASSIFICATION: transfer learning on {text, label} "
            "records (labels strings or integers); reports accuracy, precision, recall, F1. "
            "PREFERENCE: direct preference optimization (DPO) on {prompt, chosen, rejected} "
            "records or OpenAI's {input, preferred_output, non_preferred_output}; "
            "hyperParameters.dpoBeta sets its beta; reports reward_accuracy, reward_margin, "
            "chosen_reward, rejected_reward."
        ),
    ] = "FINE_TUNING"
    trainingDataConfig: TrainingDataConfig
    validationDataConfig: ValidationDataConfig | None = None
    outputDataConfig: OutputDataConfig
    hyperParameters: HyperParameters = HyperParameters()
    resources: JobResources = JobResources()
    clientRequestToken: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=256,
            pattern=_TOKEN_PATTERN,
            description="Makes create idempotent: the same token with the same body returns "
            "the same job; with a different body it is rejected (409).",
        ),
    ] = None
    tags: Annotated[
        dict[
            Annotated[str, Field(min_length=1, max_length=128)],
            Annotated[str, Field(max_length=256)],
        ],
        Field(max_length=50, description="Up to 50 key/value labels."),
    ] = {}
    integrations: IntegrationsConfig | None = None
    notifications: NotificationsConfig | None = None

    @field_validator("baseModelIdentifier")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        return _checked_uri(value, "baseModelIdentifier", folder=True)

    @model_validator(mode="after")
    def _hyperparameter_settings(self) -> JobCreate:
        """LoRA knobs only with method LORA, DPO knobs only with customizationType
        PREFERENCE, and target modules that can name a module.

        A LoRA knob the caller set to something other than its default is refused with
        method FULL (it would silently do nothing), a DPO knob likewise with any other
        customizationType; a default sent back as it is (a job's
        described hyperParameters reused for a new job) is not. Raised as a
        ValidationError located at the field, so every face names
        `hyperParameters.<field>` as it does for a range error.
        """
        hyper = self.hyperParameters
        problems: list[InitErrorDetails] = []
        if hyper.method == "FULL":
            problems += [
                _field_error(
                    name,
                    getattr(hyper, name),
                    "lora_only",
                    f"{name} applies only to method LORA; set method to LORA or leave {name} out",
                )
                for name in _LORA_ONLY
                if _set_off_default(hyper, name)
            ]
        if self.customizationType != "PREFERENCE":
            problems += [
                _field_error(
                    name,
                    getattr(hyper, name),
                    "preference_only",
                    f"{name} applies only to customizationType PREFERENCE; set "
                    f"customizationType to PREFERENCE or leave {name} out",
                )
                for name in _PREFERENCE_ONLY
                if _set_off_default(hyper, name)
            ]
        modules = hyper.loraTargetModules
        if modules is not None and not modules:
            problems.append(
                _field_error(
                    "loraTargetModules",
                    modules,
                    "empty_module_list",
                    "loraTargetModules must name at least one module, or be left out for the "
                    "architecture's default",
                )
            )
        bad = [name for name in modules or [] if not _MODULE_NAME.match(name) or len(name) > 200]
        if bad:
            problems.append(
                _field_error(
                    "loraTargetModules",
                    modules,
                    "module_name",
                    f"loraTargetModules has names that cannot be module names: {bad[:5]}; a "
                    "name is letters, digits and '_' (dotted paths allowed), e.g. q_proj",
                )
            )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_validation_data(self) -> JobCreate:
        """Early stopping watches the validation loss: without validation data it could
        never fire, so the job is refused at create rather than failing later."""
        patience = self.hyperParameters.earlyStoppingPatience
        if patience and self.validationDataConfig is None:
            problem = _field_error(
                "earlyStoppingPatience",
                patience,
                "needs_validation_data",
                "earlyStoppingPatience needs validation data: add validationDataConfig or "
                "set earlyStoppingPatience to 0",
            )
            raise ValidationError.from_exception_data(type(self).__name__, [problem])
        return self


def _set_off_default(hyper: HyperParameters, name: str) -> bool:
    """The caller set `name`, to something other than its default."""
    return (
        name in hyper.model_fields_set
        and getattr(hyper, name) != HyperParameters.model_fields[name].default
    )


def _field_error(name: str, value: object, kind: str, message: str) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(kind, message),
        loc=("hyperParameters", name),
        input=value,
    )


class FailurePublic(BaseModel):
    reason: FailureReason
    message: str


class OutputLocations(BaseModel):
    outputS3Uri: str = Field(description="The job's own folder under outputDataConfig.")
    modelS3Uri: str
    trainingMetricsS3Uri: str
    validationMetricsS3Uri: str
    checkpointsS3Uri: str


class JobPublic(BaseModel):
    jobId: str
    jobName: str
    state: JobState = Field(
        description="QUEUED, VALIDATING, RUNNING, STOPPING, then COMPLETED, FAILED or STOPPED; "
        "PAUSED (not ended) between a pause and a resume."
    )
    stopRequested: bool
    pauseRequested: bool = Field(
        default=False,
        description="A pause was asked for and not taken back: the job is PAUSED, or will "
        "be once its trainer has committed a checkpoint.",
    )
    createdAt: str
    updatedAt: str
    startedAt: str | None = None
    endedAt: str | None = None
    customizationType: str
    baseModelIdentifier: str
    trainingDataConfig: TrainingDataConfig
    validationDataConfig: ValidationDataConfig | None = None
    outputDataConfig: OutputDataConfig
    hyperParameters: HyperParameters
    resources: JobResources = JobResources()
    tags: dict[str, str]
    clientRequestToken: str | None = None
    progress: Progress
    failure: FailurePublic | None = None
    output: OutputLocations
    attempt: int = Field(
        description="Launch attempt of the trainer (the last one while queued after a "
        "resume); 0 while never launched."
    )
    queuePosition: int | None = Field(
        default=None, description="While QUEUED for a free trainer slot: 1 starts next."
    )
    stateTimes: dict[str, str] = Field(
        default={}, description="When the job entered each state it has been in."
    )
    dataSummary: DataSummary | None = Field(
        default=None,
        description="What validation found in the data: record counts, token-length "
        "percentiles of the training records, truncated records, label distribution "
        "(CLASSIFICATION). Set once the data is checked.",
    )
    integrations: IntegrationsConfig | None = None
    notifications: NotificationsConfig | None = None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        spec, status = job.spec, job.status
        state = status.state
        # A stop request shows at once, before the trainer acknowledges it.
        if job.control.stopRequested and not state.is_terminal():
            state = JobState.STOPPING
        prefix = spec.output_prefix
        # What the caller chose, field for field (JobRequest); the shared documents as
        # they are. Only declared fields: a newer writer's extra fields are not shown.
        chosen = {name: _declared(getattr(spec, name)) for name in JobRequest.model_fields}
        chosen.update(hyperParameters=spec.hyperParameters, resources=spec.resources)
        return cls(
            **chosen,
            jobId=spec.jobId,
            state=state,
            stopRequested=job.control.stopRequested,
            pauseRequested=job.control.pauseRequested,
            createdAt=spec.createdAt,
            updatedAt=status.updatedAt,
            startedAt=status.startedAt,
            endedAt=status.endedAt,
            progress=status.progress,
            failure=(
                FailurePublic(reason=status.failure.reason, message=status.failure.message)
                if status.failure
                else None
            ),
            output=OutputLocations(
                outputS3Uri=prefix,
                modelS3Uri=prefix + "model/",
                trainingMetricsS3Uri=prefix + "training_artifacts/step_wise_training_metrics.csv",
                validationMetricsS3Uri=prefix
                + "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv",
                checkpointsS3Uri=prefix + "checkpoints/",
            ),
            attempt=status.launch.attempt if status.launch else status.previousAttempts,
            stateTimes=status.stateTimes,
            queuePosition=status.queuePosition,
            dataSummary=status.dataSummary,
        )


def _declared(value: Any) -> Any:
    """A stored value as plain data with only the fields its model declares."""
    if isinstance(value, BaseModel):
        return {name: _declared(getattr(value, name)) for name in type(value).model_fields}
    return value


class JobList(BaseModel):
    jobs: list[JobPublic]
    nextPageToken: str | None = Field(
        default=None, description="Pass as pageToken for the next page; absent on the last."
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: INVALID_ARGUMENT, NOT_FOUND, ...")
    message: str = Field(description="What is wrong, in words a user can act on.")
    field: str | None = Field(default=None, description="The request field at fault.")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Every problem found, when there are several."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail
