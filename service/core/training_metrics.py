"""A job's training and validation metrics, read from the CSV files the trainer writes.

Transport-free (the REST route and the dashboard use it). The files are the ones of the
job's output folder (docs/architecture.md, "The state bucket"):

    <output>training_artifacts/step_wise_training_metrics.csv
        step_number,epoch_number,training_loss,perplexity[,more columns]
    <output>validation_artifacts/post_fine_tuning_validation/validation_metrics.csv
        step_number,epoch_number,validation_loss,perplexity[,accuracy,precision,recall,f1]

PREFERENCE (DPO) jobs add reward_accuracy,reward_margin,chosen_reward,rejected_reward to
both files (their losses are the DPO loss).

Invariants:
- Columns are found by their header name, never by position, so a trainer that adds a
  column (learning rate, classification scores) needs no change here: every column past
  the known ones lands in a row's `metrics`.
- A file not written yet (the job has not reached its first step or evaluation, or the
  output bucket does not exist yet) reads as no rows, not as an error.
- Values that are not finite numbers (NaN, inf, empty) read as None: JSON has no NaN.
- A caller sees only its own tenant's jobs.
- Keys are built from the job's validated output prefix (`JobSpec.output_prefix`); the
  objects are read through the JobStore's ObjectStore only.
"""

from __future__ import annotations

import csv
import io
import math

from pydantic import BaseModel, Field

from jobstore.storage import ObjectMissing, parse_s3_uri
from jobstore.store import JobStore
from service.core.jobs import owned_spec

TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
_KNOWN_COLUMNS = {"step_number", "epoch_number", "training_loss", "validation_loss", "perplexity"}


class TrainingMetricRow(BaseModel):
    step: int = Field(description="The optimizer step.")
    epoch: int
    trainingLoss: float | None = Field(description="Mean loss of the step's batches.")
    perplexity: float | None = None
    metrics: dict[str, float | None] = Field(
        default={}, description="Any further columns of the file, by header name."
    )


class ValidationMetricRow(BaseModel):
    step: int = Field(description="The optimizer step the evaluation ran after.")
    epoch: int
    validationLoss: float | None
    perplexity: float | None = None
    metrics: dict[str, float | None] = Field(
        default={},
        description="Further columns: accuracy, precision, recall, f1 for classification; "
        "reward_accuracy, reward_margin, chosen_reward, rejected_reward for PREFERENCE.",
    )


class JobMetrics(BaseModel):
    """Every metric row the trainer has uploaded so far, by step."""

    jobId: str
    training: list[TrainingMetricRow]
    validation: list[ValidationMetricRow]


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rows(text: str) -> list[dict[str, str]]:
    """The CSV's complete rows (a row cut short by a concurrent rewrite is left out)."""
    reader = csv.DictReader(io.StringIO(text))
    return [
        row
        for row in reader
        if None not in row.values() and (row.get("step_number") or "").isdigit()
    ]


def _extra(row: dict[str, str]) -> dict[str, float | None]:
    return {name: _number(value) for name, value in row.items() if name not in _KNOWN_COLUMNS}


def read_job_metrics(store: JobStore, job_id: str, *, tenant: str) -> JobMetrics:
    """The job's metric rows; JobNotFound for an unknown job or another tenant's (the
    same answer, so that nobody learns which ids exist)."""
    spec = owned_spec(store, job_id, tenant)
    training_text = _read_text(store, spec.output_prefix + TRAINING_CSV)
    validation_text = _read_text(store, spec.output_prefix + VALIDATION_CSV)
    training = [
        TrainingMetricRow(
            step=int(row["step_number"]),
            epoch=int(_number(row.get("epoch_number")) or 0),
            trainingLoss=_number(row.get("training_loss")),
            perplexity=_number(row.get("perplexity")),
            metrics=_extra(row),
        )
        for row in _rows(training_text)
    ]
    validation = [
        ValidationMetricRow(
            step=int(row["step_number"]),
            epoch=int(_number(row.get("epoch_number")) or 0),
            validationLoss=_number(row.get("validation_loss")),
            perplexity=_number(row.get("perplexity")),
            metrics=_extra(row),
        )
        for row in _rows(validation_text)
    ]
    return JobMetrics(jobId=job_id, training=training, validation=validation)


def _read_text(store: JobStore, uri: str) -> str:
    location = parse_s3_uri(uri, field="outputDataConfig.s3Uri")
    try:
        found = store.storage.get_bytes(location)
    except ObjectMissing:  # the output bucket does not exist (yet)
        return ""
    return found[0].decode("utf-8", errors="replace") if found is not None else ""
