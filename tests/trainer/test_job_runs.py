"""The real trainer, end to end on the real object store: a job that completes, and jobs
refused for bad data or an unsafe model."""

from __future__ import annotations

import csv
import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import FailureReason, JobState, TrainerExit, new_job_id
from jobstore.storage import ObjectStore, S3Location
from jobstore.store import JobStore
from tests.trainer.jobs import DATA_BUCKET, Demo, TrainerRun, create_job, output_location

TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"


def read_csv(storage: ObjectStore, location: S3Location) -> tuple[str, list[dict[str, str]]]:
    """(header line, rows) of a CSV object."""
    found = storage.get_bytes(location)
    assert found is not None, f"{location.uri} is missing"
    text = found[0].decode()
    return text.splitlines()[0], list(csv.DictReader(io.StringIO(text)))


def test_demo_job_completes_with_metrics_and_a_loadable_model(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
    tmp_path: Path,
) -> None:
    spec = create_job(
        job_store,
        training_uri=demo.train_uri,
        validation_uri=demo.validation_uri,
        model_uri=demo.model_uri,
    )
    run = start_trainer(spec.jobId)
    assert run.wait() == TrainerExit.OK, run.log()

    status, _ = job_store.get_status(spec.jobId)
    assert status.state is JobState.COMPLETED, run.log()
    assert status.failure is None
    assert status.launch is not None and status.launch.attempt == 1  # the trainer left it
    progress = status.progress
    assert progress.step == progress.totalSteps == 2 * 38  # 300 records, batches of 8
    assert progress.epoch == progress.totalEpochs == 2
    assert progress.firstStepAt is not None and progress.tokensSeen > 0
    assert progress.trainingLoss is not None and progress.validationLoss is not None
    assert status.heartbeatAt is not None
    assert {"VALIDATING", "RUNNING", "COMPLETED"} <= set(status.stateTimes)

    header, rows = read_csv(object_store, output_location(spec, TRAINING_CSV))
    assert header == "step_number,epoch_number,training_loss,perplexity,token_accuracy"
    assert [int(r["step_number"]) for r in rows] == list(range(1, 77))
    assert [int(r["epoch_number"]) for r in rows] == [1] * 38 + [2] * 38
    losses = [float(r["training_loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], losses
    assert float(rows[-1]["training_loss"]) == pytest.approx(progress.trainingLoss, abs=1e-5)
    # As the loss falls, more of the completion tokens are predicted right.
    accuracies = [float(r["token_accuracy"]) for r in rows]
    assert all(0.0 <= value <= 1.0 for value in accuracies)
    assert sum(accuracies[-5:]) / 5 > accuracies[0], accuracies
    assert progress.trainingTokenAccuracy == pytest.approx(accuracies[-1], abs=1e-5)

    header, rows = read_csv(object_store, output_location(spec, VALIDATION_CSV))
    assert header == "step_number,epoch_number,validation_loss,perplexity,token_accuracy"
    assert [(r["step_number"], r["epoch_number"]) for r in rows] == [("38", "1"), ("76", "2")]
    assert progress.validationMetrics["token_accuracy"] == pytest.approx(
        float(rows[-1]["token_accuracy"]), abs=1e-5
    )
    # Training packs (the default), so evaluation packs too (trainer/evaluation.py).
    assert run.log().count("packed rows)") == 2, run.log()

    events = [(e.type, e.state) for e in job_store.list_events(spec.jobId)]
    assert [state for kind, state in events if kind == "STATE_CHANGED"] == [
        JobState.VALIDATING,
        JobState.RUNNING,
        JobState.COMPLETED,
    ]
    uploaded_log = object_store.get_bytes(job_store.log_location(spec.jobId, 1))
    assert uploaded_log is not None and b"trainer exits with OK" in uploaded_log[0]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "final-model"
    object_store.download_prefix(output_location(spec, "model"), model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer("What is 2 + 3?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 1


def test_bad_dataset_fails_with_every_bad_line_before_any_model_is_loaded(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    good = json.dumps({"prompt": "What is 1 + 1?\nAnswer:", "completion": " 2"})
    lines = [good, good, '{"prompt": "oops"', good, json.dumps({"prompt": "no answer"}), good]
    data = S3Location(DATA_BUCKET, f"bad-{new_job_id()}/train.jsonl")
    object_store.put_bytes(data, ("\n".join(lines) + "\n").encode())
    missing_validation = f"s3://{DATA_BUCKET}/no-such-file-{new_job_id()}.jsonl"
    # The model does not exist either: were it loaded before the data is checked, the
    # job would fail with MODEL_LOAD instead.
    spec = create_job(
        job_store,
        training_uri=data.uri,
        validation_uri=missing_validation,
        model_uri=f"s3://{DATA_BUCKET}/no-such-model/",
    )
    run = start_trainer(spec.jobId)
    assert run.wait() == TrainerExit.BAD_INPUT, run.log()

    status, _ = job_store.get_status(spec.jobId)
    assert status.state is JobState.FAILED
    assert status.failure is not None
    assert status.failure.reason is FailureReason.DATA_VALIDATION
    message = status.failure.message
    assert f"{data.uri}:3: not valid JSON" in message
    assert f'{data.uri}:5: missing "completion"' in message
    assert f"validation data {missing_validation} does not exist" in message
    assert ":1:" not in message and ":2:" not in message
    assert status.progress.step == 0
    assert object_store.head(output_location(spec, TRAINING_CSV)) is None
    assert "loaded" not in run.log()


class _WritesAFile:
    """Unpickling this runs `open(path, "w").write(...)`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("defect", ["pickle-weights", "auto_map"])
def test_unsafe_model_is_refused_with_model_load(
    defect: str,
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    demo_model_dir: Path,
    start_trainer: Callable[..., TrainerRun],
    tmp_path: Path,
) -> None:
    model_dir = Path(shutil.copytree(demo_model_dir, tmp_path / "model"))
    # A real payload: unpickling it (torch.load without weights_only, pickle.load) would
    # write this file. The trainer must refuse the model without ever unpickling it.
    marker = tmp_path / "pickle-payload-ran"
    if defect == "pickle-weights":
        payload = pickle.dumps(_WritesAFile(str(marker)))
        (model_dir / "pytorch_model.bin").write_bytes(payload)
        expected = "pytorch_model.bin"
    else:
        config = json.loads((model_dir / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
        (model_dir / "config.json").write_text(json.dumps(config))
        expected = "config.json asks for remote code (auto_map)"
    location = S3Location(DATA_BUCKET, f"models/{defect}-{new_job_id()}/")
    object_store.upload_directory(model_dir, location)

    spec = create_job(job_store, training_uri=demo.train_uri, model_uri=location.uri)
    run = start_trainer(spec.jobId)
    assert run.wait() == TrainerExit.BAD_INPUT, run.log()

    status, _ = job_store.get_status(spec.jobId)
    assert status.state is JobState.FAILED
    assert status.failure is not None
    assert status.failure.reason is FailureReason.MODEL_LOAD
    assert expected in status.failure.message
    assert location.uri in status.failure.message
    assert status.progress.step == 0
    assert object_store.head(output_location(spec, TRAINING_CSV)) is None
    assert not marker.exists(), "the planted pickle payload ran"
