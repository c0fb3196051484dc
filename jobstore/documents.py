"""The job documents in the state bucket: the one definition of the contract.
Long because it is every stored document's one definition, with their ranges.

Shared by the API server, the reconciler and the trainer (docs/architecture.md, "The
state bucket").

    jobs/<job-id>/spec.json          JobSpec, written once at create (If-None-Match)
    jobs/<job-id>/status.json        JobStatus, observed state (If-Match compare-and-swap)
    jobs/<job-id>/control.json       JobControl, desired state (stop requests)
    jobs/<job-id>/events/<seq>.json  JobEvent, append-only
    jobs/<job-id>/logs/attempt-<n>/trainer.log   each launch attempt's trainer log

`transition()` owns the legal state moves; anything else raises `IllegalTransition`.
"""

from __future__ import annotations

import enum
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobstore.errors import IllegalTransition

# -- job ids -------------------------------------------------------------------

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_BITS = 50
JOB_ID_PATTERN = r"^[0-9a-hjkmnp-tv-z]{16}$"


def _base32(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        digits.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(digits))


def new_job_id(now_ms: int | None = None) -> str:
    """A 16-character id whose ascending order is newest first.

    The first 10 characters are the creation time in milliseconds subtracted from
    2^50, so S3's ascending key order under `jobs/` lists the newest job first and
    a page of the newest jobs needs no scan of the older ones. The last 6 are random.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    inverted = (1 << _TIME_BITS) - 1 - ms
    return _base32(inverted, 10) + _base32(secrets.randbits(30), 6)


def job_id_created_ms(job_id: str) -> int:
    inverted = 0
    for char in job_id[:10]:
        inverted = inverted * 32 + _ALPHABET.index(char)
    return (1 << _TIME_BITS) - 1 - inverted


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- states --------------------------------------------------------------------


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    VALIDATING = "VALIDATING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # Not ended: no trainer, its newest checkpoint committed; a resume queues it again.
    PAUSED = "PAUSED"

    def is_terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.STOPPED)


_LEGAL_MOVES: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {
        JobState.VALIDATING,
        JobState.STOPPING,
        JobState.STOPPED,
        JobState.FAILED,
        JobState.PAUSED,
    },
    JobState.VALIDATING: {JobState.RUNNING, JobState.STOPPING, JobState.FAILED, JobState.PAUSED},
    JobState.RUNNING: {JobState.COMPLETED, JobState.STOPPING, JobState.FAILED, JobState.PAUSED},
    JobState.STOPPING: {JobState.STOPPED, JobState.FAILED},
    JobState.PAUSED: {JobState.QUEUED, JobState.STOPPED, JobState.FAILED},
    JobState.STOPPED: set(),
    JobState.COMPLETED: set(),
    JobState.FAILED: set(),
}


def transition(current: JobState, new: JobState) -> JobState:
    """Return `new` if the move is legal; raise `IllegalTransition` otherwise."""
    if new not in _LEGAL_MOVES[current]:
        raise IllegalTransition(f"illegal job state change {current} -> {new}")
    return new


class FailureReason(enum.StrEnum):
    DATA_VALIDATION = "DATA_VALIDATION"
    MODEL_LOAD = "MODEL_LOAD"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    STORAGE = "STORAGE"
    TRAINER_CRASHED = "TRAINER_CRASHED"
    INTERNAL = "INTERNAL"
    RESOURCES_UNAVAILABLE = "RESOURCES_UNAVAILABLE"


# -- spec ----------------------------------------------------------------------


class _Document(BaseModel):
    # Stored documents keep fields they do not know: during a rolling upgrade a newer
    # trainer or replica may add one, and an older reader must neither fail on it nor
    # drop it when it writes the document back (compare-and-swap keeps it).
    model_config = ConfigDict(extra="allow", populate_by_name=True)


LearningRateScheduler = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "fp32"]
TrainingMethod = Literal["FULL", "LORA"]


class HyperParameters(_Document):
    """Training knobs. Every field has a default and a documented range."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epochCount: Annotated[
        int, Field(ge=1, le=100, description="Passes over the training data. 1-100.")
    ] = 3
    batchSize: Annotated[
        int, Field(ge=1, le=1024, description="Examples per forward/backward pass. 1-1024.")
    ] = 8
    learningRate: Annotated[
        float,
        Field(gt=0, le=1, description="Peak AdamW learning rate after warm-up. (0, 1]."),
    ] = 5e-5
    learningRateWarmupSteps: Annotated[
        int,
        Field(ge=0, le=100_000, description="Optimizer steps of linear warm-up. 0-100000."),
    ] = 0
    gradientAccumulationSteps: Annotated[
        int,
        Field(
            ge=1,
            le=1024,
            description="Batches whose gradients are summed before one optimizer step. 1-1024.",
        ),
    ] = 1
    maxSequenceLength: Annotated[
        int,
        Field(
            ge=8,
            le=32_768,
            description="Tokens per example. Longer instruction and classification "
            "examples are truncated; longer documents are split into chunks.",
        ),
    ] = 512
    weightDecay: Annotated[
        float, Field(ge=0, le=1, description="AdamW decoupled weight decay. 0-1.")
    ] = 0.0
    seed: Annotated[
        int, Field(ge=0, le=2**31 - 1, description="Seed for shuffling and initialisation.")
    ] = 42
    dropout: Annotated[
        float | None,
        Field(
            ge=0,
            lt=1,
            description="Dropout probability set on the model's config (attention, hidden and "
            "classifier dropout where the architecture has them). [0, 1). Unset keeps the base "
            "model's own values.",
        ),
    ] = None
    lrScheduler: Annotated[
        LearningRateScheduler,
        Field(
            description="Learning-rate shape after warm-up: linear decay to 0, cosine decay to "
            "0, or constant."
        ),
    ] = "linear"
    maxGradNorm: Annotated[
        float,
        Field(
            ge=0,
            le=1000,
            description="Gradients are clipped to this global L2 norm before each optimizer "
            "step; 0 turns clipping off. 0-1000.",
        ),
    ] = 1.0
    evalIntervalSteps: Annotated[
        int,
        Field(
            ge=0,
            le=1_000_000,
            description="Evaluate on the validation data every this many optimizer steps, as "
            "well as at each epoch end; 0 means at epoch ends only. 0-1000000.",
        ),
    ] = 0
    checkpointIntervalSteps: Annotated[
        int,
        Field(
            ge=0,
            le=1_000_000,
            description="Commit a resumable checkpoint every this many optimizer steps, as well "
            "as at each epoch end; 0 means at epoch ends only. 0-1000000.",
        ),
    ] = 0
    keepCheckpoints: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="Committed checkpoints kept in the output (the newest ones); older "
            "ones are deleted. The final model is always kept. 1-100.",
        ),
    ] = 2
    earlyStoppingPatience: Annotated[
        int,
        Field(
            ge=0,
            le=1000,
            description="Stop training after this many evaluations in a row without the "
            "validation loss improving by more than earlyStoppingThreshold; 0 turns early "
            "stopping off. Needs validation data. 0-1000.",
        ),
    ] = 0
    earlyStoppingThreshold: Annotated[
        float,
        Field(
            ge=0,
            le=100,
            description="Smallest drop in validation loss (nats) that counts as an "
            "improvement for early stopping. 0-100.",
        ),
    ] = 0.0
    precision: Annotated[
        Precision,
        Field(
            description="Numeric precision of training: auto (bf16 mixed precision where the "
            "GPU supports it, else fp32), bf16, or fp32."
        ),
    ] = "auto"
    method: Annotated[
        TrainingMethod,
        Field(
            description="FULL updates every weight; LORA trains low-rank adapters (peft) and "
            "leaves the base weights frozen."
        ),
    ] = "FULL"
    loraRank: Annotated[
        int, Field(ge=1, le=1024, description="LoRA rank r (method LORA). 1-1024.")
    ] = 8
    loraAlpha: Annotated[
        float,
        Field(gt=0, le=4096, description="LoRA scaling alpha (method LORA). (0, 4096]."),
    ] = 16.0
    loraDropout: Annotated[
        float, Field(ge=0, lt=1, description="Dropout on the LoRA path (method LORA). [0, 1).")
    ] = 0.05
    loraTargetModules: Annotated[
        list[str] | None,
        Field(
            max_length=64,
            description="Module names the adapters wrap (method LORA), e.g. "
            '["q_proj", "v_proj"]. Unset picks the attention projections of the '
            "base model's architecture.",
        ),
    ] = None
    packing: Annotated[
        bool,
        Field(
            description="Pack the examples of each batch into full sequences with no padding; "
            "attention never crosses examples and the loss is the same as unpacked training. "
            "Turn off only to compare."
        ),
    ] = True
    mergeAdapter: Annotated[
        bool,
        Field(
            description="method LORA: also write a merged full model (base + adapter) next "
            "to the adapter in the final output."
        ),
    ] = False
    dpoBeta: Annotated[
        float,
        Field(
            gt=0,
            le=10,
            description="customizationType PREFERENCE: DPO's beta, how far the tuned model "
            "may move from the base model to prefer the chosen answers (smaller: further). "
            "(0, 10].",
        ),
    ] = 0.1


class DataLocation(_Document):
    s3Uri: str


class MlflowIntegration(_Document):
    """Log the training to this MLflow tracking server (trainer/mlflow_tracking.py)."""

    trackingUri: str
    experimentName: str = "tuneforge"


class Integrations(_Document):
    """Outside systems the trainer reports to; the host was allowed at create."""

    mlflow: MlflowIntegration | None = None


class Notifications(_Document):
    """Where to tell about the job's end (service/webhooks/delivery.py)."""

    webhookUrl: str | None = None


Sharding = Literal["DDP", "FSDP"]


class JobResources(_Document):
    """What one attempt of the job runs on; launchers turn it into their own requests
    (a Ray entrypoint's GPUs, a Kubernetes Job's `nvidia.com/gpu` and completions)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    gpus: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            description="GPUs per node, one trainer rank each; 0 trains on CPU (one rank "
            "a node). local: that many of the host's GPUs (torchrun for more than 1); "
            "ray: the Ray job's GPUs, or each Ray Train worker's with several nodes; "
            "kubernetes: each pod's nvidia.com/gpu. 0-64.",
        ),
    ] = 0
    nodes: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Nodes the job spans, each running `gpus` ranks (1 on CPU): "
            "nodes x max(gpus, 1) ranks in all. local: 1 only. ray: more than 1 runs a "
            "Ray Train group of one worker a node (each with the node's GPUs), on "
            "separate Ray nodes unless the operator's placement allows packing. "
            "kubernetes: an Indexed Job of that many pods, each with `gpus` GPUs (the "
            "scheduler may put two on one machine that has room). 1-64.",
        ),
    ] = 1
    sharding: Annotated[
        Sharding,
        Field(
            description="How ranks share the model with several GPUs: DDP replicates it, "
            "FSDP shards it (for models that do not fit one GPU)."
        ),
    ] = "DDP"


class JobRequest(_Document):
    """What the caller chose, as stored: the API's create request (`JobCreate`, validated
    there) has exactly these fields, and a job's answer (`JobPublic`) shows them all;
    tests/layers checks that the three name the same fields."""

    jobName: str
    customizationType: str = "FINE_TUNING"
    baseModelIdentifier: str
    trainingDataConfig: DataLocation
    validationDataConfig: DataLocation | None = None
    outputDataConfig: DataLocation
    hyperParameters: HyperParameters
    tags: dict[str, str] = {}
    clientRequestToken: str | None = None
    integrations: Integrations | None = None
    notifications: Notifications | None = None
    resources: JobResources = JobResources()

    @field_validator("integrations")
    @classmethod
    def _no_empty_integrations(cls, value: Integrations | None) -> Integrations | None:
        # `integrations: {}` asks for nothing: stored (and shown) as no integrations. One
        # holding fields of a newer writer is kept as it is.
        empty = value is not None and value.mlflow is None and not value.model_extra
        return None if empty else value

    @field_validator("notifications")
    @classmethod
    def _no_empty_notifications(cls, value: Notifications | None) -> Notifications | None:
        empty = value is not None and not value.webhookUrl and not value.model_extra
        return None if empty else value


class JobSpec(JobRequest):
    """What the user asked for, with what the server gave it (id, tenant, creation time).
    Written once; never changes."""

    jobId: str
    tenant: str = "default"
    createdAt: str

    @property
    def output_prefix(self) -> str:
        """`<output>/model-customization-job-<job-id>/` (docs/architecture.md, "The state
        bucket")."""
        return f"{self.outputDataConfig.s3Uri.rstrip('/')}/model-customization-job-{self.jobId}/"


# -- status --------------------------------------------------------------------


class DataCheck(_Document):
    """VALIDATING: how far preflight is through the data (trainer/preflight.py). Phase
    "checking" reads every record of the files; "tokenizing" reads them again and
    tokenizes them. Bytes are of the data files, both splits together."""

    phase: Literal["checking", "tokenizing"]
    bytesDone: int = 0
    bytesTotal: int = 0
    recordsDone: int = 0
    # Records of this phase per second so far; None until there is a rate.
    recordsPerSecond: float | None = None


class Progress(_Document):
    step: int = 0
    totalSteps: int | None = None
    epoch: int = 0
    totalEpochs: int | None = None
    trainingLoss: float | None = None
    # Causal-LM jobs: share of the latest step's target tokens predicted right.
    trainingTokenAccuracy: float | None = None
    validationLoss: float | None = None
    tokensSeen: int = 0
    etaSeconds: float | None = None
    firstStepAt: str | None = None
    # Of the last evaluation: a causal-LM job's token_accuracy; a classification job's
    # accuracy, precision, recall, f1.
    validationMetrics: dict[str, float] = {}
    # Filled by the trainer's reporter (trainer/reporting.py) for /metrics: the learning
    # rate of the latest step, recent throughput, and peak GPU memory when there is a GPU.
    learningRate: float | None = None
    tokensPerSecond: float | None = None
    gpuMemoryBytes: int | None = None
    # While VALIDATING: the data checked so far; None once training reports.
    dataCheck: DataCheck | None = None


class TokenLengths(_Document):
    """Percentiles (nearest rank) of the records' token counts, before truncation."""

    p50: int
    p90: int
    p99: int
    max: int


class DataSummary(_Document):
    """What preflight validation found in the data (trainer/preflight.py)."""

    trainingRecords: int
    validationRecords: int = 0
    # Of the training records; None when there are none.
    tokenLengths: TokenLengths | None = None
    # Records (training and validation) longer than maxSequenceLength, cut to fit.
    truncatedRecords: int = 0
    # CLASSIFICATION: training records per label.
    labelDistribution: dict[str, int] = {}


class Failure(_Document):
    reason: FailureReason
    message: str


# -- a dry run's answer (POST /v1/jobs with validateOnly) -------------------------------


class _Report(BaseModel):
    # Written by the trainer's dry run (trainer/dry_run.py), read by the service, never
    # stored: a field a newer trainer adds is dropped, not refused.
    model_config = ConfigDict(extra="ignore")


class SplitValidation(_Report):
    """One data file as the job's VALIDATING stage reads and tokenizes it."""

    s3Uri: str
    records: int = Field(description="Well-formed records (lines with a record).")
    examples: int | None = Field(
        default=None,
        description="Training examples they make (CONTINUED_PRE_TRAINING: chunks of "
        "maxSequenceLength; PREFERENCE: answers, two a pair); null until every record is "
        "well-formed.",
    )
    tokens: int | None = Field(
        default=None,
        description="Tokens once truncated, as training counts them (for the training split, "
        "progress.tokensSeen counts these once an epoch); null until every record is "
        "well-formed.",
    )
    tokenLengths: TokenLengths | None = Field(
        default=None, description="Percentiles of the records' token counts, before truncation."
    )
    overMaxSequenceLength: int = Field(
        default=0,
        description="Records longer than maxSequenceLength (truncated; CONTINUED_PRE_TRAINING "
        "documents are split instead and not counted here).",
    )
    overMaxSequenceLengthLines: list[str] = Field(
        default=[], description="The first of them, as s3://bucket/key:LINE."
    )


class TrainingEstimate(_Report):
    """A rough training time: compute needed over an assumed sustained throughput."""

    seconds: float
    flops: float = Field(description="Floating-point operations the estimate counts.")
    parameters: int = Field(description="The base model's parameters (its safetensors headers).")
    device: Literal["cpu", "gpu"]
    devices: int = Field(description="Ranks the job trains on: nodes x max(gpus, 1).")
    flopsPerSecondPerDevice: float = Field(description="The assumed sustained throughput.")
    assumption: str = Field(description="What the estimate is based on, in words.")


class JobValidationReport(_Report):
    """What a job's VALIDATING stage would find, without a job: a dry run's answer."""

    valid: bool = Field(description="True when the job would pass VALIDATING and train.")
    errors: list[str] = Field(
        default=[],
        description="Every problem found, as a failing job names them: "
        "`s3://bucket/key:LINE: what is wrong` (up to 1,000; errorCount counts all).",
    )
    errorCount: int = 0
    warnings: list[str] = Field(
        default=[],
        description="What would be a VALIDATION_WARNING event: truncated records, "
        "duplicates, validation records also in the training data.",
    )
    customizationType: str
    maxSequenceLength: int = Field(
        description="The length records are checked against: hyperParameters."
        "maxSequenceLength, capped at the model's positions."
    )
    training: SplitValidation | None = None
    validation: SplitValidation | None = None
    labels: list[str] | None = Field(
        default=None, description="CLASSIFICATION: the label set, in class-id order."
    )
    labelDistribution: dict[str, int] = Field(
        default={}, description="CLASSIFICATION: training records per label."
    )
    stepsPerEpoch: int | None = Field(
        default=None,
        description="Optimizer steps an epoch: ceil(ceil(examples / (batchSize x ranks)) / "
        "gradientAccumulationSteps).",
    )
    totalSteps: int | None = Field(
        default=None, description="stepsPerEpoch x epochCount (progress.totalSteps of the job)."
    )
    trainingTokens: int | None = Field(
        default=None,
        description="Training tokens x epochCount: the job's progress.tokensSeen when it "
        "completes (unless it stops early).",
    )
    estimate: TrainingEstimate | None = None


class LaunchRecord(_Document):
    """Written by the reconciler that won the launch of an attempt."""

    attempt: int
    launcher: str
    host: str
    pid: int | None = None
    processStartTicks: int | None = None
    launchedAt: str
    launchedBy: str
    # The host GPUs the attempt was given (its CUDA_VISIBLE_DEVICES), local launcher with
    # a GPU inventory only (service/control/launch/gpus.py); empty: none were assigned.
    devices: list[str] = []


class JobStatus(_Document):
    """What is observed. The trainer writes state and progress while its attempt
    lives; the reconciler writes `launch`, and writes state only for a job with no
    live trainer (queued, or its trainer dead). Every write is a compare-and-swap."""

    state: JobState = JobState.QUEUED
    updatedAt: str
    startedAt: str | None = None
    endedAt: str | None = None
    heartbeatAt: str | None = None
    launch: LaunchRecord | None = None
    progress: Progress = Progress()
    failure: Failure | None = None
    stateTimes: dict[str, str] = {}
    # Relaunches so far, by cause ("crash", "preemption"); written by the reconciler.
    retries: dict[str, int] = {}
    # 1 for the next job to start, while QUEUED for a free slot; written by the reconciler.
    queuePosition: int | None = None
    # What preflight validation found; written by the trainer once the data is checked.
    dataSummary: DataSummary | None = None
    # Attempts launched before the job was last resumed from PAUSED (its next attempt is
    # the one after them); written by the reconciler.
    previousAttempts: int = 0

    def moved_to(self, new: JobState) -> JobStatus:
        """A copy in state `new`, with its time recorded; raises on an illegal move."""
        now = utc_now()
        moved = self.model_copy(deep=True)
        moved.state = transition(self.state, new)
        moved.updatedAt = now
        moved.stateTimes[new.value] = now
        if new in (JobState.VALIDATING,) and moved.startedAt is None:
            moved.startedAt = now
        if new.is_terminal():
            moved.endedAt = now
        return moved


class JobControl(_Document):
    """What the user wants, beyond the spec. Written by the API only (compare-and-swap,
    so a pause and a stop never overwrite each other)."""

    stopRequested: bool = False
    stopRequestedAt: str | None = None
    # Paused: its trainer commits a checkpoint and leaves, the job PAUSED until resumed
    # (pauseRequested back to False).
    pauseRequested: bool = False
    pauseRequestedAt: str | None = None


class JobEvent(_Document):
    sequence: int
    time: str
    type: str
    message: str
    state: JobState | None = None


class TrainerExit(enum.IntEnum):
    """Exit codes of `python -m trainer`, read by launchers.

    OK: COMPLETED, STOPPED or PAUSED written (or the job was already terminal).
    BAD_INPUT: FAILED for bad data or a refused model; never retried.
    CRASHED: FAILED (OUT_OF_MEMORY / STORAGE / INTERNAL) written, or nothing could be
    written: read status.state; only a non-terminal state is a crash to handle.
    FENCED: another attempt owns the job; this one wrote nothing.
    PREEMPTED: SIGTERM; a checkpoint was committed and no terminal state written.
    """

    OK = 0
    CRASHED = 1
    BAD_INPUT = 2
    FENCED = 3
    PREEMPTED = 143
