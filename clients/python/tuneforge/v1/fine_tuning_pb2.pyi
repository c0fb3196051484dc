import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    VALIDATING: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    STOPPING: _ClassVar[JobState]
    STOPPED: _ClassVar[JobState]
    COMPLETED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    PAUSED: _ClassVar[JobState]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    DATA_VALIDATION: _ClassVar[FailureReason]
    MODEL_LOAD: _ClassVar[FailureReason]
    OUT_OF_MEMORY: _ClassVar[FailureReason]
    STORAGE: _ClassVar[FailureReason]
    TRAINER_CRASHED: _ClassVar[FailureReason]
    INTERNAL: _ClassVar[FailureReason]
    RESOURCES_UNAVAILABLE: _ClassVar[FailureReason]

class CustomizationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CUSTOMIZATION_TYPE_UNSPECIFIED: _ClassVar[CustomizationType]
    FINE_TUNING: _ClassVar[CustomizationType]
    CONTINUED_PRE_TRAINING: _ClassVar[CustomizationType]
    CLASSIFICATION: _ClassVar[CustomizationType]
    PREFERENCE: _ClassVar[CustomizationType]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
VALIDATING: JobState
RUNNING: JobState
STOPPING: JobState
STOPPED: JobState
COMPLETED: JobState
FAILED: JobState
PAUSED: JobState
FAILURE_REASON_UNSPECIFIED: FailureReason
DATA_VALIDATION: FailureReason
MODEL_LOAD: FailureReason
OUT_OF_MEMORY: FailureReason
STORAGE: FailureReason
TRAINER_CRASHED: FailureReason
INTERNAL: FailureReason
RESOURCES_UNAVAILABLE: FailureReason
CUSTOMIZATION_TYPE_UNSPECIFIED: CustomizationType
FINE_TUNING: CustomizationType
CONTINUED_PRE_TRAINING: CustomizationType
CLASSIFICATION: CustomizationType
PREFERENCE: CustomizationType

class DataConfig(_message.Message):
    __slots__ = ("s3_uri",)
    S3_URI_FIELD_NUMBER: _ClassVar[int]
    s3_uri: str
    def __init__(self, s3_uri: _Optional[str] = ...) -> None: ...

class HyperParameters(_message.Message):
    __slots__ = ("epoch_count", "batch_size", "learning_rate", "learning_rate_warmup_steps", "gradient_accumulation_steps", "max_sequence_length", "weight_decay", "seed", "dropout", "lr_scheduler", "max_grad_norm", "eval_interval_steps", "checkpoint_interval_steps", "keep_checkpoints", "early_stopping_patience", "early_stopping_threshold", "precision", "method", "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "packing", "merge_adapter", "dpo_beta")
    EPOCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    LORA_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    MERGE_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    DPO_BETA_FIELD_NUMBER: _ClassVar[int]
    epoch_count: int
    batch_size: int
    learning_rate: float
    learning_rate_warmup_steps: int
    gradient_accumulation_steps: int
    max_sequence_length: int
    weight_decay: float
    seed: int
    dropout: float
    lr_scheduler: str
    max_grad_norm: float
    eval_interval_steps: int
    checkpoint_interval_steps: int
    keep_checkpoints: int
    early_stopping_patience: int
    early_stopping_threshold: float
    precision: str
    method: str
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: _containers.RepeatedScalarFieldContainer[str]
    packing: bool
    merge_adapter: bool
    dpo_beta: float
    def __init__(self, epoch_count: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., learning_rate_warmup_steps: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_sequence_length: _Optional[int] = ..., weight_decay: _Optional[float] = ..., seed: _Optional[int] = ..., dropout: _Optional[float] = ..., lr_scheduler: _Optional[str] = ..., max_grad_norm: _Optional[float] = ..., eval_interval_steps: _Optional[int] = ..., checkpoint_interval_steps: _Optional[int] = ..., keep_checkpoints: _Optional[int] = ..., early_stopping_patience: _Optional[int] = ..., early_stopping_threshold: _Optional[float] = ..., precision: _Optional[str] = ..., method: _Optional[str] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., lora_dropout: _Optional[float] = ..., lora_target_modules: _Optional[_Iterable[str]] = ..., packing: _Optional[bool] = ..., merge_adapter: _Optional[bool] = ..., dpo_beta: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "total_epochs", "training_loss", "validation_loss", "tokens_seen", "eta_seconds", "first_step_at", "validation_metrics", "training_token_accuracy", "learning_rate", "tokens_per_second", "gpu_memory_bytes", "data_check")
    class ValidationMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SEEN_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_AT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_CHECK_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    training_loss: float
    validation_loss: float
    tokens_seen: int
    eta_seconds: float
    first_step_at: _timestamp_pb2.Timestamp
    validation_metrics: _containers.ScalarMap[str, float]
    training_token_accuracy: float
    learning_rate: float
    tokens_per_second: float
    gpu_memory_bytes: int
    data_check: DataCheck
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., tokens_seen: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., first_step_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., validation_metrics: _Optional[_Mapping[str, float]] = ..., training_token_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., gpu_memory_bytes: _Optional[int] = ..., data_check: _Optional[_Union[DataCheck, _Mapping]] = ...) -> None: ...

class DataCheck(_message.Message):
    __slots__ = ("phase", "bytes_done", "bytes_total", "records_done", "records_per_second")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DONE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    phase: str
    bytes_done: int
    bytes_total: int
    records_done: int
    records_per_second: float
    def __init__(self, phase: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., records_done: _Optional[int] = ..., records_per_second: _Optional[float] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: FailureReason
    message: str
    def __init__(self, reason: _Optional[_Union[FailureReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class TokenLengths(_message.Message):
    __slots__ = ("p50", "p90", "p99", "max")
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    p50: int
    p90: int
    p99: int
    max: int
    def __init__(self, p50: _Optional[int] = ..., p90: _Optional[int] = ..., p99: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class DataSummary(_message.Message):
    __slots__ = ("training_records", "validation_records", "token_lengths", "truncated_records", "label_distribution")
    class LabelDistributionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TRAINING_RECORDS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    training_records: int
    validation_records: int
    token_lengths: TokenLengths
    truncated_records: int
    label_distribution: _containers.ScalarMap[str, int]
    def __init__(self, training_records: _Optional[int] = ..., validation_records: _Optional[int] = ..., token_lengths: _Optional[_Union[TokenLengths, _Mapping]] = ..., truncated_records: _Optional[int] = ..., label_distribution: _Optional[_Mapping[str, int]] = ...) -> None: ...

class OutputLocations(_message.Message):
    __slots__ = ("output_s3_uri", "model_s3_uri", "training_metrics_s3_uri", "validation_metrics_s3_uri", "checkpoints_s3_uri")
    OUTPUT_S3_URI_FIELD_NUMBER: _ClassVar[int]
    MODEL_S3_URI_FIELD_NUMBER: _ClassVar[int]
    TRAINING_METRICS_S3_URI_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_METRICS_S3_URI_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_S3_URI_FIELD_NUMBER: _ClassVar[int]
    output_s3_uri: str
    model_s3_uri: str
    training_metrics_s3_uri: str
    validation_metrics_s3_uri: str
    checkpoints_s3_uri: str
    def __init__(self, output_s3_uri: _Optional[str] = ..., model_s3_uri: _Optional[str] = ..., training_metrics_s3_uri: _Optional[str] = ..., validation_metrics_s3_uri: _Optional[str] = ..., checkpoints_s3_uri: _Optional[str] = ...) -> None: ...

class StateTime(_message.Message):
    __slots__ = ("state", "time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "job_name", "state", "stop_requested", "pause_requested", "created_at", "updated_at", "started_at", "ended_at", "customization_type", "base_model_identifier", "training_data_config", "validation_data_config", "output_data_config", "hyper_parameters", "tags", "client_request_token", "progress", "failure", "output", "attempt", "state_times", "queue_position", "data_summary", "notifications", "integrations", "resources")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STOP_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PAUSE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    HYPER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_TIMES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    DATA_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job_name: str
    state: JobState
    stop_requested: bool
    pause_requested: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    customization_type: CustomizationType
    base_model_identifier: str
    training_data_config: DataConfig
    validation_data_config: DataConfig
    output_data_config: DataConfig
    hyper_parameters: HyperParameters
    tags: _containers.ScalarMap[str, str]
    client_request_token: str
    progress: Progress
    failure: Failure
    output: OutputLocations
    attempt: int
    state_times: _containers.RepeatedCompositeFieldContainer[StateTime]
    queue_position: int
    data_summary: DataSummary
    notifications: Notifications
    integrations: Integrations
    resources: Resources
    def __init__(self, job_id: _Optional[str] = ..., job_name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stop_requested: _Optional[bool] = ..., pause_requested: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customization_type: _Optional[_Union[CustomizationType, str]] = ..., base_model_identifier: _Optional[str] = ..., training_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., validation_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., output_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., hyper_parameters: _Optional[_Union[HyperParameters, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., client_request_token: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., output: _Optional[_Union[OutputLocations, _Mapping]] = ..., attempt: _Optional[int] = ..., state_times: _Optional[_Iterable[_Union[StateTime, _Mapping]]] = ..., queue_position: _Optional[int] = ..., data_summary: _Optional[_Union[DataSummary, _Mapping]] = ..., notifications: _Optional[_Union[Notifications, _Mapping]] = ..., integrations: _Optional[_Union[Integrations, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("job_name", "base_model_identifier", "customization_type", "training_data_config", "validation_data_config", "output_data_config", "hyper_parameters", "client_request_token", "tags", "notifications", "integrations", "resources", "validate_only")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    HYPER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    base_model_identifier: str
    customization_type: CustomizationType
    training_data_config: DataConfig
    validation_data_config: DataConfig
    output_data_config: DataConfig
    hyper_parameters: HyperParameters
    client_request_token: str
    tags: _containers.ScalarMap[str, str]
    notifications: Notifications
    integrations: Integrations
    resources: Resources
    validate_only: bool
    def __init__(self, job_name: _Optional[str] = ..., base_model_identifier: _Optional[str] = ..., customization_type: _Optional[_Union[CustomizationType, str]] = ..., training_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., validation_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., output_data_config: _Optional[_Union[DataConfig, _Mapping]] = ..., hyper_parameters: _Optional[_Union[HyperParameters, _Mapping]] = ..., client_request_token: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., notifications: _Optional[_Union[Notifications, _Mapping]] = ..., integrations: _Optional[_Union[Integrations, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("gpus", "nodes", "sharding")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SHARDING_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    nodes: int
    sharding: str
    def __init__(self, gpus: _Optional[int] = ..., nodes: _Optional[int] = ..., sharding: _Optional[str] = ...) -> None: ...

class Integrations(_message.Message):
    __slots__ = ("mlflow",)
    MLFLOW_FIELD_NUMBER: _ClassVar[int]
    mlflow: MlflowIntegration
    def __init__(self, mlflow: _Optional[_Union[MlflowIntegration, _Mapping]] = ...) -> None: ...

class MlflowIntegration(_message.Message):
    __slots__ = ("tracking_uri", "experiment_name")
    TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    tracking_uri: str
    experiment_name: str
    def __init__(self, tracking_uri: _Optional[str] = ..., experiment_name: _Optional[str] = ...) -> None: ...

class Notifications(_message.Message):
    __slots__ = ("webhook_url",)
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    webhook_url: str
    def __init__(self, webhook_url: _Optional[str] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job", "created", "validation_report")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_REPORT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    validation_report: JobValidationReport
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ..., validation_report: _Optional[_Union[JobValidationReport, _Mapping]] = ...) -> None: ...

class SplitValidation(_message.Message):
    __slots__ = ("s3_uri", "records", "examples", "tokens", "token_lengths", "over_max_sequence_length", "over_max_sequence_length_lines")
    S3_URI_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    OVER_MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    OVER_MAX_SEQUENCE_LENGTH_LINES_FIELD_NUMBER: _ClassVar[int]
    s3_uri: str
    records: int
    examples: int
    tokens: int
    token_lengths: TokenLengths
    over_max_sequence_length: int
    over_max_sequence_length_lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, s3_uri: _Optional[str] = ..., records: _Optional[int] = ..., examples: _Optional[int] = ..., tokens: _Optional[int] = ..., token_lengths: _Optional[_Union[TokenLengths, _Mapping]] = ..., over_max_sequence_length: _Optional[int] = ..., over_max_sequence_length_lines: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainingEstimate(_message.Message):
    __slots__ = ("seconds", "flops", "parameters", "device", "devices", "flops_per_second_per_device", "assumption")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_SECOND_PER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    ASSUMPTION_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    flops: float
    parameters: int
    device: str
    devices: int
    flops_per_second_per_device: float
    assumption: str
    def __init__(self, seconds: _Optional[float] = ..., flops: _Optional[float] = ..., parameters: _Optional[int] = ..., device: _Optional[str] = ..., devices: _Optional[int] = ..., flops_per_second_per_device: _Optional[float] = ..., assumption: _Optional[str] = ...) -> None: ...

class JobValidationReport(_message.Message):
    __slots__ = ("valid", "errors", "error_count", "warnings", "customization_type", "max_sequence_length", "training", "validation", "labels", "label_distribution", "steps_per_epoch", "total_steps", "training_tokens", "estimate")
    class LabelDistributionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMIZATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    errors: _containers.RepeatedScalarFieldContainer[str]
    error_count: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    customization_type: CustomizationType
    max_sequence_length: int
    training: SplitValidation
    validation: SplitValidation
    labels: _containers.RepeatedScalarFieldContainer[str]
    label_distribution: _containers.ScalarMap[str, int]
    steps_per_epoch: int
    total_steps: int
    training_tokens: int
    estimate: TrainingEstimate
    def __init__(self, valid: _Optional[bool] = ..., errors: _Optional[_Iterable[str]] = ..., error_count: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., customization_type: _Optional[_Union[CustomizationType, str]] = ..., max_sequence_length: _Optional[int] = ..., training: _Optional[_Union[SplitValidation, _Mapping]] = ..., validation: _Optional[_Union[SplitValidation, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., label_distribution: _Optional[_Mapping[str, int]] = ..., steps_per_epoch: _Optional[int] = ..., total_steps: _Optional[int] = ..., training_tokens: _Optional[int] = ..., estimate: _Optional[_Union[TrainingEstimate, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "time", "type", "message", "state")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    type: str
    message: str
    state: JobState
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "s3_uri", "committed_at", "epoch", "training_loss", "validation_loss", "validation_metrics", "training_token_accuracy")
    class ValidationMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    S3_URI_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAINING_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    step: int
    s3_uri: str
    committed_at: _timestamp_pb2.Timestamp
    epoch: int
    training_loss: float
    validation_loss: float
    validation_metrics: _containers.ScalarMap[str, float]
    training_token_accuracy: float
    def __init__(self, step: _Optional[int] = ..., s3_uri: _Optional[str] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epoch: _Optional[int] = ..., training_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., validation_metrics: _Optional[_Mapping[str, float]] = ..., training_token_accuracy: _Optional[float] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class ReadJobLogRequest(_message.Message):
    __slots__ = ("job_id", "offset", "max_bytes", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    max_bytes: int
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ..., max_bytes: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReadJobLogResponse(_message.Message):
    __slots__ = ("data", "next_offset", "size", "attempt")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    next_offset: int
    size: int
    attempt: int
    def __init__(self, data: _Optional[bytes] = ..., next_offset: _Optional[int] = ..., size: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...
