"""The OpenAI face's mapping of methods and metrics (pure logic): `dpo` <-> a PREFERENCE
job, and a DPO job's reward metrics in its `metrics` events and checkpoints. The SDK
tests (test_sdk.py) cover the same over a real server; these cover what a job there never
reaches (a DPO job's metric rows)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from jobstore.documents import DataLocation, HyperParameters, JobControl, JobSpec, JobStatus
from jobstore.store import Job
from service.core.files import FileStore
from service.core.jobs import Checkpoint
from service.core.model_catalog import ModelCatalog
from service.core.training_metrics import JobMetrics, TrainingMetricRow, ValidationMetricRow
from service.errors import InvalidArgument
from service.faces.openai import mapping
from service.faces.openai.schemas import FineTuningJobCreate

REWARDS = {
    "reward_accuracy": 0.75,
    "reward_margin": 0.5,
    "chosen_reward": 0.25,
    "rejected_reward": -0.25,
}


class _Files:
    files_bucket = "files"

    def uri(self, tenant: str, file_id: str) -> str:
        return f"s3://files/{tenant}/{file_id}.jsonl"

    def file_id_of(self, tenant: str, uri: str) -> str | None:
        return None


class _Catalog:
    def base_model_uri(self, tenant: str, model: str) -> str:
        return "s3://models/base/"

    def base_name(self, uri: str) -> str:
        return "base"

    def fine_tuned_name(self, job: Job) -> str:
        return f"ft:base:x:{job.spec.jobId}"


FILES = cast(FileStore, _Files())
CATALOG = cast(ModelCatalog, _Catalog())


def _create(method: dict[str, Any] | None) -> Any:
    request = FineTuningJobCreate.model_validate(
        {"model": "base", "training_file": "file-1", "method": method}
    )
    return mapping.job_create(
        request, tenant="acme", files=FILES, catalog=CATALOG, idempotency_key=None
    )


def _job(customization_type: str, **hyper: Any) -> Job:
    spec = JobSpec(
        jobId="0p5v2m8x3k7qa1b2",
        jobName="mapping",
        tenant="acme",
        createdAt="2025-01-02T03:04:05Z",
        customizationType=customization_type,
        baseModelIdentifier="s3://models/base/",
        trainingDataConfig=DataLocation(s3Uri="s3://files/acme/file-1.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://files/acme/outputs/"),
        hyperParameters=HyperParameters(**hyper),
    )
    status = JobStatus(
        updatedAt="2025-01-02T03:10:05Z", progress={"firstStepAt": "2025-01-02T03:05:05Z"}
    )
    return Job(spec, status, JobControl())


@pytest.mark.parametrize(("beta", "expected"), [(0.2, 0.2), (3, 3.0), ("auto", 0.1), (None, 0.1)])
def test_dpo_makes_a_preference_job_with_its_beta(beta: Any, expected: float) -> None:
    hyper = {"n_epochs": 2} | ({} if beta is None else {"beta": beta})
    native = _create({"type": "dpo", "dpo": {"hyperparameters": hyper}})
    assert native.customizationType == "PREFERENCE"
    assert native.hyperParameters.dpoBeta == expected
    assert native.hyperParameters.epochCount == 2


def test_supervised_and_no_method_make_a_fine_tuning_job() -> None:
    for method in (None, {"type": "supervised"}):
        native = _create(method)
        assert native.customizationType == "FINE_TUNING"
        assert "dpoBeta" not in native.hyperParameters.model_fields_set


def test_reinforcement_and_mixed_methods_are_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        _create({"type": "reinforcement"})
    assert refused.value.field == "method.type"
    with pytest.raises(InvalidArgument) as mixed:
        _create({"type": "dpo", "supervised": {}})
    assert mixed.value.field == "method.supervised"


def test_a_preference_job_reads_back_as_dpo_and_others_as_supervised() -> None:
    shown = mapping.fine_tuning_job(
        _job("PREFERENCE", dpoBeta=0.2, epochCount=2), files=FILES, catalog=CATALOG
    )
    assert shown.method.type == "dpo" and shown.method.supervised is None
    assert shown.method.dpo is not None
    assert shown.method.dpo.hyperparameters.beta == 0.2
    assert shown.method.dpo.hyperparameters.n_epochs == 2
    for kind in ("FINE_TUNING", "CONTINUED_PRE_TRAINING", "CLASSIFICATION"):
        other = mapping.fine_tuning_job(_job(kind), files=FILES, catalog=CATALOG)
        assert other.method.type == "supervised" and other.method.dpo is None


def test_a_dpo_jobs_reward_metrics_go_out_in_events_and_checkpoints() -> None:
    job = _job("PREFERENCE", dpoBeta=0.2)
    metrics = JobMetrics(
        jobId=job.spec.jobId,
        training=[
            TrainingMetricRow(step=1, epoch=1, trainingLoss=0.69, metrics=REWARDS),
            TrainingMetricRow(step=2, epoch=1, trainingLoss=0.6, metrics=REWARDS),
        ],
        validation=[ValidationMetricRow(step=2, epoch=1, validationLoss=0.65, metrics=REWARDS)],
    )
    first, second = mapping.metrics_events(job, metrics)
    assert first.data == {
        "step": 1,
        "total_steps": 2,
        "train_loss": 0.69,
        **{f"train_{name}": value for name, value in REWARDS.items()},
    }
    assert second.data is not None and second.data["valid_loss"] == 0.65
    for name, value in REWARDS.items():
        assert second.data[f"valid_{name}"] == value
    assert "train_mean_token_accuracy" not in second.data

    found = Checkpoint(
        step=2,
        s3Uri="s3://files/acme/outputs/checkpoints/step-2/",
        trainingLoss=0.6,
        validationLoss=0.65,
        validationMetrics=REWARDS,
    )
    shown = mapping.checkpoint(job, found, "ft:base:x:job").metrics
    assert (shown.valid_reward_accuracy, shown.valid_reward_margin) == (0.75, 0.5)
    assert (shown.valid_chosen_reward, shown.valid_rejected_reward) == (0.25, -0.25)
    assert shown.valid_mean_token_accuracy is None and shown.train_mean_token_accuracy is None


def test_an_idempotency_key_is_the_token_or_gives_one() -> None:
    """A key that is a clientRequestToken is used as it is; any other (not ASCII, with
    other punctuation, too long) gives a token of its own, the same each time: a retried
    create finds its job whatever the key."""
    import re

    from service.faces.openai.routes import _usable_token

    assert _usable_token("retry-7f3a") == "retry-7f3a"
    assert _usable_token(None) is None
    derived = [_usable_token(key) for key in ("clé-1", "٣٤٥", "-leading", "a_b.c", "x" * 300)]
    assert len(set(derived)) == 5  # distinct keys, distinct tokens
    for token in derived:
        assert token is not None and len(token) <= 256
        assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", token), token
    assert derived[0] == _usable_token("clé-1")  # the same key, the same token
