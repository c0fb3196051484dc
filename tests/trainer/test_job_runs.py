"""The real trainer, end to end on the real object store: the demo job completes."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from service.documents import JobState, TrainerExit
from service.storage import ObjectStore, S3Location, parse_s3_uri
from service.store import JobStore
from tests.trainer.conftest import Demo, TrainerRun, create_job


def read_csv(storage: ObjectStore, location: S3Location) -> list[dict[str, str]]:
    found = storage.get_bytes(location)
    assert found is not None, f"{location.uri} is missing"
    return list(csv.DictReader(io.StringIO(found[0].decode())))


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
    assert status.launch is not None and status.launch.attempt == 1  # untouched
    progress = status.progress
    assert progress.step == progress.totalSteps == 2 * 38
    assert progress.epoch == progress.totalEpochs == 2
    assert progress.firstStepAt is not None and progress.tokensSeen > 0
    assert progress.validationLoss is not None
    assert status.heartbeatAt is not None
    assert {"VALIDATING", "RUNNING", "COMPLETED"} <= set(status.stateTimes)

    output = parse_s3_uri(spec.output_prefix, field="output")
    training_csv = output.child("training_artifacts/step_wise_training_metrics.csv")
    found = object_store.get_bytes(training_csv)
    assert found is not None
    assert found[0].decode().splitlines()[0] == "step_number,epoch_number,training_loss,perplexity"
    rows = read_csv(object_store, training_csv)
    assert [int(r["step_number"]) for r in rows] == list(range(1, 77))
    assert {int(r["epoch_number"]) for r in rows} == {1, 2}
    first, last = float(rows[0]["training_loss"]), float(rows[-1]["training_loss"])
    assert last < 0.6 * first, (first, last)

    validation_csv = output.child(
        "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
    )
    found = object_store.get_bytes(validation_csv)
    assert found is not None
    assert (
        found[0].decode().splitlines()[0] == "step_number,epoch_number,validation_loss,perplexity"
    )
    validation_rows = read_csv(object_store, validation_csv)
    assert [(r["step_number"], r["epoch_number"]) for r in validation_rows] == [
        ("38", "1"),
        ("76", "2"),
    ]

    events = [(e.type, e.state) for e in job_store.list_events(spec.jobId)]
    assert ("STATE_CHANGED", JobState.COMPLETED) in events
    log = object_store.get_bytes(job_store.log_location(spec.jobId))
    assert log is not None and b"COMPLETED" in log[0]

    model_dir = tmp_path / "final-model"
    object_store.download_prefix(output.child("model"), model_dir)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer("What is 2 + 3?\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 1
