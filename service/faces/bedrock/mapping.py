"""Bedrock's shapes (botocore's service model for `bedrock`) <-> the native ones."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from jobstore.documents import HyperParameters, JobState
from service.core.custom_models import MODEL_NAME_PATTERN
from service.core.schemas import JobCreate, JobPublic
from service.faces.bedrock.errors import ValidationException, validation_message
from service.faces.bedrock.registry import NameRecord
from service.settings import Settings

# -- requests ------------------------------------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Config(_Shape):
    s3Uri: Annotated[str, Field(min_length=1, max_length=1024)]


class TrainingDataConfigIn(_Shape):
    s3Uri: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    invocationLogsConfig: dict[str, Any] | None = None


class ValidationDataConfigIn(_Shape):
    validators: Annotated[list[S3Config], Field(min_length=1, max_length=10)]


class TagIn(_Shape):
    key: Annotated[str, Field(min_length=1, max_length=128)]
    value: Annotated[str, Field(max_length=256)]


class CreateJobIn(_Shape):
    jobName: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9+\-.])*$")
    ]
    customModelName: Annotated[str, Field(min_length=1, max_length=63, pattern=MODEL_NAME_PATTERN)]
    roleArn: Annotated[
        str, Field(max_length=2048, pattern=r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$")
    ]
    clientRequestToken: Annotated[
        str | None,
        Field(
            min_length=1, max_length=256, pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?$"
        ),
    ] = None
    baseModelIdentifier: Annotated[str, Field(min_length=1, max_length=2048)]
    customizationType: str | None = None
    customModelKmsKeyId: str | None = None
    jobTags: Annotated[list[TagIn], Field(max_length=200)] = []
    customModelTags: Annotated[list[TagIn], Field(max_length=200)] = []
    trainingDataConfig: TrainingDataConfigIn
    validationDataConfig: ValidationDataConfigIn | None = None
    outputDataConfig: S3Config
    hyperParameters: dict[str, str] = {}
    vpcConfig: dict[str, Any] | None = None
    customizationConfig: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """A hash of the whole request, token included (it is part of what was sent)."""
        body = self.model_dump(mode="json")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_create(body: bytes) -> CreateJobIn:
    try:
        return CreateJobIn.model_validate_json(body or b"{}")
    except ValidationError as error:
        raise ValidationException(validation_message(list(error.errors()))) from None


# Bedrock's own customization types that tuneforge's trainer implements, and tuneforge's
# PREFERENCE (DPO; Bedrock has no such type, botocore sends any string). The face also
# follows the native schema, so it never accepts what the native API refuses.
_BEDROCK_TYPES = ("FINE_TUNING", "CONTINUED_PRE_TRAINING", "PREFERENCE")


def supported_customization_types() -> tuple[str, ...]:
    annotation = JobCreate.model_fields["customizationType"].annotation
    native = {str(a) for a in typing.get_args(annotation)}
    return tuple(t for t in _BEDROCK_TYPES if t in native)


def _tags(tags: list[TagIn], field: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for tag in tags:
        if tag.key in found:
            raise ValidationException(f"{field} has the key '{tag.key}' more than once")
        found[tag.key] = tag.value
    return found


def _range(info: FieldInfo) -> str:
    low, high, open_low, open_high = "", "", False, False
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = str(item.ge)
        elif isinstance(item, annotated_types.Gt):
            low, open_low = str(item.gt), True
        elif isinstance(item, annotated_types.Le):
            high = str(item.le)
        elif isinstance(item, annotated_types.Lt):
            high, open_high = str(item.lt), True
    if open_low or open_high:
        return f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return f"{low}-{high}"


def _value_type(info: FieldInfo) -> Any:
    """The field's type without `| None` (unset is spelled by leaving the key out)."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _describe(info: FieldInfo) -> str:
    """What a value of the field looks like, for an error message."""
    kind = _value_type(info)
    if kind is int:
        return f"an integer in the range {_range(info)}"
    if kind is float:
        return f"a number in the range {_range(info)}"
    if kind is bool:
        return "true or false"
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(kind))
    return "a comma-separated list of names"


def _parse_hyper_parameter(key: str, raw: str, info: FieldInfo) -> object:
    """One Bedrock string as the native field's type; ValidationException if it is not one."""
    kind = _value_type(info)
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    elif kind is bool:
        if raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
    elif typing.get_origin(kind) is typing.Literal:
        if raw in typing.get_args(kind):
            return raw
    elif typing.get_origin(kind) is list:
        return [name.strip() for name in raw.split(",") if name.strip()]
    raise ValidationException(f"hyperParameters.{key} must be {_describe(info)}, got {raw!r}")


def hyper_parameters(values: dict[str, str]) -> HyperParameters:
    """Bedrock's string map -> the native HyperParameters, with the native ranges.

    Every value is a string: numbers as Bedrock writes them ("3", "0.0001"), booleans
    "true" / "false", choices as the native API spells them ("cosine", "LORA"), and
    loraTargetModules as a comma-separated list ("q_proj,v_proj").
    """
    fields = HyperParameters.model_fields
    parsed: dict[str, object] = {}
    for key, raw in values.items():
        info = fields.get(key)
        if info is None:
            raise ValidationException(
                f"hyperParameters.{key} is not a supported hyperparameter; supported: "
                + ", ".join(fields)
            )
        parsed[key] = _parse_hyper_parameter(key, raw, info)
    try:
        return HyperParameters.model_validate(parsed)
    except ValidationError as error:
        item = error.errors()[0]
        key = str(item["loc"][0]) if item.get("loc") else "?"
        info = fields[key]
        raise ValidationException(
            f"hyperParameters.{key} must be {_describe(info)}, got "
            f"{values.get(key)!r} ({item['msg']})"
        ) from None


def hyper_parameter_strings(hyper: HyperParameters) -> dict[str, str]:
    """The native values as Bedrock's string map, in the form `hyper_parameters` reads:
    unset ones (None) left out, booleans "true" / "false", lists comma-separated."""
    strings: dict[str, str] = {}
    for key, value in hyper.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            strings[key] = "true" if value else "false"
        elif isinstance(value, list):
            strings[key] = ",".join(value)
        else:
            strings[key] = str(value)
    return strings


def to_native(request: CreateJobIn, base_model_uri: str, gpus: int = 0) -> JobCreate:
    """The native create request, asking for `gpus` GPUs (the operator's
    TUNEFORGE_BEDROCK_JOB_GPUS); raises ValidationException naming the field at fault."""
    unsupported = [
        name
        for name in ("customModelKmsKeyId", "vpcConfig", "customizationConfig")
        if getattr(request, name) is not None
    ]
    if request.trainingDataConfig.invocationLogsConfig is not None:
        unsupported.append("trainingDataConfig.invocationLogsConfig")
    if unsupported:
        raise ValidationException(f"tuneforge does not support {', '.join(unsupported)}")
    supported = supported_customization_types()
    customization = request.customizationType or "FINE_TUNING"
    if customization not in supported:
        raise ValidationException(
            f"customizationType {customization!r} is not supported; supported: "
            + ", ".join(supported)
        )
    if request.trainingDataConfig.s3Uri is None:
        raise ValidationException("trainingDataConfig.s3Uri is required")
    validators = request.validationDataConfig.validators if request.validationDataConfig else []
    if len(validators) > 1:
        raise ValidationException("validationDataConfig.validators: tuneforge takes one validator")
    body: dict[str, Any] = {
        "jobName": request.jobName,
        "baseModelIdentifier": base_model_uri,
        "customizationType": customization,
        "trainingDataConfig": {"s3Uri": request.trainingDataConfig.s3Uri},
        "outputDataConfig": {"s3Uri": request.outputDataConfig.s3Uri},
        "hyperParameters": hyper_parameters(request.hyperParameters),
        "tags": _tags(request.jobTags, "jobTags"),
        "clientRequestToken": request.clientRequestToken,
        "resources": {"gpus": gpus},
    }
    if validators:
        body["validationDataConfig"] = {"s3Uri": validators[0].s3Uri}
    _tags(request.customModelTags, "customModelTags")
    try:
        return JobCreate.model_validate(body)
    except ValidationError as error:
        message = validation_message(list(error.errors()))
        message = message.replace("validationDataConfig.", "validationDataConfig.validators[0].")
        raise ValidationException(message) from None


# -- identifiers ---------------------------------------------------------------


@dataclass(frozen=True)
class Arns:
    region: str
    account: str

    @classmethod
    def of(cls, settings: Settings) -> Arns:
        return cls(settings.bedrock_region, settings.bedrock_account_id)

    def job(self, job_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account}:model-customization-job/{job_id}"

    def model(self, job_id: str) -> str:
        return f"arn:aws:bedrock:{self.region}:{self.account}:custom-model/{job_id}"

    def resource_id(self, arn: str, kind: str) -> str | None:
        """The id in one of our ARNs of `kind`; None for any other ARN."""
        prefix = f"arn:aws:bedrock:{self.region}:{self.account}:{kind}/"
        return arn[len(prefix) :] if arn.startswith(prefix) else None


# -- responses -----------------------------------------------------------------

STATUS = {
    JobState.QUEUED: "InProgress",
    JobState.VALIDATING: "InProgress",
    JobState.RUNNING: "InProgress",
    JobState.STOPPING: "Stopping",
    JobState.STOPPED: "Stopped",
    JobState.COMPLETED: "Completed",
    JobState.FAILED: "Failed",
    # Bedrock has no pause: a paused job has not ended.
    JobState.PAUSED: "InProgress",
}
NATIVE_STATES = {
    bedrock: {native for native, mapped in STATUS.items() if mapped == bedrock}
    for bedrock in set(STATUS.values())
}
# Stage -> (native states during it, native state that ends it).
_STAGES = {
    "validationDetails": ((JobState.QUEUED, JobState.VALIDATING), JobState.RUNNING),
    "dataProcessingDetails": ((JobState.VALIDATING,), JobState.RUNNING),
    "trainingDetails": ((JobState.RUNNING,), JobState.COMPLETED),
}


def status_details(job: JobPublic) -> dict[str, Any]:
    times = job.stateTimes
    details: dict[str, Any] = {}
    for stage, (during, ends) in _STAGES.items():
        started = [times[s.value] for s in during if s.value in times]
        if ends.value in times:
            details[stage] = {
                "status": "Completed",
                "creationTime": started[0] if started else times[ends.value],
                "lastModifiedTime": times[ends.value],
            }
        elif not started:
            details[stage] = {"status": "NotStarted"}
        else:
            status = STATUS[job.state]
            details[stage] = {
                "status": status,
                "creationTime": started[0],
                "lastModifiedTime": job.endedAt or job.updatedAt,
            }
    return details


def job_response(job: JobPublic, names: NameRecord | None, arns: Arns) -> dict[str, Any]:
    status = STATUS[job.state]
    response: dict[str, Any] = {
        "jobArn": arns.job(job.jobId),
        "jobName": job.jobName,
        "outputModelName": names.customModelName if names else job.jobName,
        "roleArn": names.roleArn if names else "",
        "status": status,
        "statusDetails": status_details(job),
        "creationTime": job.createdAt,
        "lastModifiedTime": job.updatedAt,
        "baseModelArn": names.baseModelIdentifier if names else job.baseModelIdentifier,
        "hyperParameters": hyper_parameter_strings(job.hyperParameters),
        "trainingDataConfig": {"s3Uri": job.trainingDataConfig.s3Uri},
        "validationDataConfig": {
            "validators": (
                [{"s3Uri": job.validationDataConfig.s3Uri}] if job.validationDataConfig else []
            )
        },
        "outputDataConfig": {"s3Uri": job.outputDataConfig.s3Uri},
        "customizationType": job.customizationType,
    }
    if job.clientRequestToken:
        response["clientRequestToken"] = job.clientRequestToken
    if job.endedAt:
        response["endTime"] = job.endedAt
    if job.failure:
        response["failureMessage"] = f"{job.failure.reason.value}: {job.failure.message}"
    if status == "Completed":
        response["outputModelArn"] = arns.model(job.jobId)
    if job.progress.trainingLoss is not None:
        response["trainingMetrics"] = {"trainingLoss": job.progress.trainingLoss}
    if job.progress.validationLoss is not None:
        response["validationMetrics"] = [{"validationLoss": job.progress.validationLoss}]
    return response


def job_summary(job: JobPublic, names: NameRecord | None, arns: Arns) -> dict[str, Any]:
    full = job_response(job, names, arns)
    summary: dict[str, Any] = {
        key: full[key]
        for key in (
            "jobArn",
            "baseModelArn",
            "jobName",
            "status",
            "statusDetails",
            "lastModifiedTime",
            "creationTime",
            "endTime",
            "customizationType",
        )
        if key in full
    }
    summary["customModelName"] = full["outputModelName"]
    if "outputModelArn" in full:
        summary["customModelArn"] = full["outputModelArn"]
    return summary
