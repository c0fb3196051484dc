"""Preference tuning (DPO) with the real trainer on the real object store: a synthetic
preference (a polite or a curt request, as the prompt's cue asks; held-out items in the
validation data) is learned, full fine-tuning and LoRA alike: the validation reward
accuracy ends well above chance, and the metrics files carry the reward columns."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import JobSpec, JobState, TrainerExit
from jobstore.storage import ObjectStore, S3Location
from jobstore.store import JobStore
from tests.trainer.jobs import (
    DATA_BUCKET,
    Demo,
    TrainerRun,
    committed_checkpoints,
    create_job,
    output_location,
    set_launch_attempt,
    wait_for,
)

TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
REWARD_COLUMNS = "reward_accuracy,reward_margin,chosen_reward,rejected_reward"
ITEMS = [
    "apple",
    "pear",
    "plum",
    "fig",
    "lime",
    "kiwi",
    "mango",
    "melon",
    "grape",
    "lemon",
    "peach",
    "cherry",
    "olive",
    "onion",
    "carrot",
    "bean",
    "pea",
    "corn",
    "rice",
    "bread",
    "salt",
    "sugar",
    "tea",
    "milk",
    "cheese",
    "butter",
    "honey",
    "jam",
    "soup",
    "pasta",
    "pizza",
    "cake",
    "pie",
    "nut",
    "seed",
]
VALIDATION_ITEMS = ["cup", "fork", "spoon", "plate", "bowl", "knife", "jug", "pan"]


def _records(items: list[str]) -> str:
    """Two pairs an item whose preferences are opposite: the prompt's cue decides
    whether the polite or the curt answer is preferred, so the answers alone say
    nothing and a model that ignores the cue stays at chance."""
    lines = []
    for item in items:
        polite, curt = f" May I have the {item}, please?", f" Give me the {item}."
        lines.append({"prompt": f"Politely, the {item}:", "chosen": polite, "rejected": curt})
        lines.append({"prompt": f"Briefly, the {item}:", "chosen": curt, "rejected": polite})
    return "".join(json.dumps(line) + "\n" for line in lines)


def _csv(storage: ObjectStore, location: S3Location) -> tuple[str, list[dict[str, str]]]:
    found = storage.get_bytes(location)
    assert found is not None, f"{location.uri} is missing"
    text = found[0].decode()
    return text.splitlines()[0], list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(
    "method",
    [
        {"method": "FULL", "learningRate": 0.002},
        {"method": "LORA", "learningRate": 0.01, "loraRank": 8, "mergeAdapter": True},
    ],
    ids=["full", "lora"],
)
def test_a_preference_job_learns_the_preferred_answers(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    demo_model_dir: Path,
    start_trainer: Callable[..., TrainerRun],
    method: dict[str, object],
    tmp_path: Path,
) -> None:
    train = S3Location(DATA_BUCKET, "preference/train.jsonl")
    validation = S3Location(DATA_BUCKET, "preference/validation.jsonl")
    object_store.put_bytes(train, _records(list(ITEMS)).encode())
    object_store.put_bytes(validation, _records(VALIDATION_ITEMS).encode())
    spec = create_job(
        job_store,
        training_uri=train.uri,
        validation_uri=validation.uri,
        model_uri=demo.model_uri,
        customization_type="PREFERENCE",
        hyper_parameters={
            "epochCount": 4,
            "batchSize": 8,
            "learningRateWarmupSteps": 2,
            "maxSequenceLength": 64,
            "evalIntervalSteps": 2,
            "dpoBeta": 0.1,
            **method,
        },
    )
    run = start_trainer(spec.jobId)
    assert run.wait(timeout=240) == TrainerExit.OK, run.log()
    status, _ = job_store.get_status(spec.jobId)
    assert status.state is JobState.COMPLETED, run.log()
    progress = status.progress
    pairs = 2 * len(ITEMS)
    steps_per_epoch = -(-pairs // 8)  # batchSize counts pairs
    assert progress.totalSteps == 4 * steps_per_epoch
    assert progress.trainingTokenAccuracy is None  # a supervised metric

    header, rows = _csv(object_store, output_location(spec, TRAINING_CSV))
    assert header == f"step_number,epoch_number,training_loss,perplexity,{REWARD_COLUMNS}"
    assert len(rows) == 4 * steps_per_epoch
    # The first step's policy is the reference: every reward 0, the loss log 2.
    assert float(rows[0]["training_loss"]) == pytest.approx(0.693147, abs=1e-4)
    assert float(rows[0]["reward_margin"]) == pytest.approx(0.0, abs=1e-4)

    header, rows = _csv(object_store, output_location(spec, VALIDATION_CSV))
    assert header == f"step_number,epoch_number,validation_loss,perplexity,{REWARD_COLUMNS}"
    accuracies = [float(row["reward_accuracy"]) for row in rows]
    margins = [float(row["reward_margin"]) for row in rows]
    # Held-out items: the preference itself was learned, not the training pairs.
    assert accuracies[-1] >= 0.9, accuracies
    assert margins[-1] > margins[0] > 0, margins
    # From log 2 (chance: the policy is the reference) down.
    assert float(rows[-1]["validation_loss"]) < 0.55, rows[-1]
    metrics = progress.validationMetrics
    assert set(metrics) == set(REWARD_COLUMNS.split(","))
    assert metrics["reward_accuracy"] == pytest.approx(accuracies[-1], abs=1e-5)
    assert metrics["chosen_reward"] > metrics["rejected_reward"]
    expected = f"reference log-probabilities of {pairs} training and 16 validation pairs"
    assert expected in run.log()
    # Trained without the base model's dropout, as the reference was computed.
    assert "dropout 0 set on the model config" in run.log()

    # Read apart from the trainer's own metrics: the tuned model (for LoRA, the merged
    # one) prefers each held-out chosen answer over its rejected one by more log-prob
    # than the base model does.
    folder = ("model", "merged") if method["method"] == "LORA" else ("model",)
    tuned_dir = tmp_path / "tuned"
    object_store.download_prefix(output_location(spec, *folder), tuned_dir)
    held_out = [json.loads(line) for line in _records(VALIDATION_ITEMS).splitlines()]
    base_margins = _log_prob_margins(demo_model_dir, held_out)
    tuned_margins = _log_prob_margins(tuned_dir, held_out)
    gains = [tuned - base for tuned, base in zip(tuned_margins, base_margins, strict=True)]
    # (Not that it prefers them outright: the base model finds the curt answers, being
    # shorter, tens of nats likelier, more than a few LoRA steps at beta 0.1 undo.)
    assert sum(gain > 0 for gain in gains) >= 0.9 * len(gains), gains


def _log_prob_margins(model_dir: Path, records: list[dict[str, str]]) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) of each record under the model,
    the answers tokenized as preflight does (prompt with BOS, answer, EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import IGNORE_INDEX, TokenizedExample, collate
    from trainer.preference import sequence_log_probs

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for record in records:
        prompt = tokenizer(record["prompt"])["input_ids"]
        for answer in (record["chosen"], record["rejected"]):
            target = [
                *tokenizer(answer, add_special_tokens=False)["input_ids"],
                tokenizer.eos_token_id,
            ]
            rows.append(TokenizedExample([*prompt, *target], [IGNORE_INDEX] * len(prompt) + target))
    with torch.no_grad():
        log_probs = sequence_log_probs(model, collate(rows, pad_id=0)).tolist()
    return [
        chosen - rejected for chosen, rejected in zip(log_probs[::2], log_probs[1::2], strict=True)
    ]


def test_a_preference_job_killed_mid_training_resumes_to_the_same_weights(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    """The reference log-probabilities come from the base weights again in the resumed
    attempt (not from the checkpoint's), so it goes on exactly: the same loss at every
    step and the same final weights, bit for bit, as a run never interrupted."""
    train = S3Location(DATA_BUCKET, "preference/resume-train.jsonl")
    object_store.put_bytes(train, _records(list(ITEMS)).encode())
    hyper_parameters = {
        "epochCount": 8,
        "batchSize": 8,
        "learningRate": 0.002,
        "maxSequenceLength": 64,
        "checkpointIntervalSteps": 5,
    }

    def new_job() -> JobSpec:
        return create_job(
            job_store,
            training_uri=train.uri,
            model_uri=demo.model_uri,
            customization_type="PREFERENCE",
            hyper_parameters=hyper_parameters,
        )

    uninterrupted, interrupted = new_job(), new_job()
    reference_run = start_trainer(uninterrupted.jobId)
    run = start_trainer(interrupted.jobId)

    def checkpointed() -> list[int]:
        assert run.process.poll() is None, run.log()
        return committed_checkpoints(object_store, interrupted)

    wait_for(checkpointed, timeout=240, what="a committed checkpoint")
    run.process.kill()
    run.wait()
    newest = committed_checkpoints(object_store, interrupted)[-1]
    set_launch_attempt(job_store, interrupted.jobId, 2)
    resumed = start_trainer(interrupted.jobId, attempt=2)
    assert resumed.wait(timeout=300) == TrainerExit.OK, resumed.log()
    assert reference_run.wait(timeout=300) == TrainerExit.OK, reference_run.log()
    assert f"resumed from step {newest}" in resumed.log()

    def produced(spec: JobSpec, *parts: str) -> bytes:
        found = object_store.get_bytes(output_location(spec, *parts))
        assert found is not None, parts
        return found[0]

    assert produced(interrupted, TRAINING_CSV) == produced(uninterrupted, TRAINING_CSV)
    weights = ("model", "model.safetensors")
    assert produced(interrupted, *weights) == produced(uninterrupted, *weights)
