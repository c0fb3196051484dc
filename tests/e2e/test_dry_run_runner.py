"""The dry-run runner (service/control/dry_run.py) over the real store, with the real
`python -m trainer.dry_run` subprocess: its report for a classification dataset (the
label set, an unknown validation label named by line), its time bound, and a Python
without the trainer's packages answered as such. Scratch directories never outlive it.
(Here, not in tests/service/control: it starts subprocesses, which `make test-fast` skips.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobstore.documents import HyperParameters, JobSpec, JobValidationReport, utc_now
from jobstore.storage import ObjectStore, S3Location
from service.control.dry_run import DryRunner
from service.errors import DryRunFailed, DryRunTimedOut, DryRunUnavailable


def _spec(training: str, validation: str | None, model: str, kind: str) -> JobSpec:
    return JobSpec(
        jobId="0p5v2m8x3k7qa1b2",
        tenant="default",
        createdAt=utc_now(),
        jobName="dry-run",
        customizationType=kind,
        baseModelIdentifier=model,
        trainingDataConfig={"s3Uri": training},
        validationDataConfig={"s3Uri": validation} if validation else None,
        outputDataConfig={"s3Uri": "s3://demo/output/"},
        hyperParameters=HyperParameters(epochCount=2, batchSize=4, maxSequenceLength=16),
    )


def _put(object_store: ObjectStore, records: list[dict[str, object]]) -> str:
    key = f"datasets/dry-run-{uuid.uuid4().hex[:8]}.jsonl"
    body = "".join(json.dumps(record) + "\n" for record in records)
    object_store.put_bytes(S3Location("demo", key), body.encode())
    return f"s3://demo/{key}"


def _runner(
    tmp_path: Path,
    environment: dict[str, str],
    *,
    timeout_seconds: float = 120.0,
    python: str | None = None,
) -> DryRunner:
    return DryRunner(
        tmp_path / "dry-runs",
        trainer_environment=environment,
        timeout_seconds=timeout_seconds,
        python=python,
    )


def test_a_classification_dry_run_reports_the_label_set_and_an_unknown_label(
    object_store: ObjectStore,
    s3_environment: dict[str, str],
    minilm_model: str,
    tmp_path: Path,
) -> None:
    texts = ["a fine film", "a dull film", "it was great", "it was awful", "loved it"]
    training = _put(
        object_store,
        [{"text": text, "label": label} for text, label in zip(texts, "pnpnp", strict=True)]
        + [{"text": "long " * 40, "label": "n"}],  # line 6: past maxSequenceLength 16
    )
    good = _put(object_store, [{"text": "nice", "label": "p"}, {"text": "bad", "label": "n"}])
    runner = _runner(tmp_path, s3_environment)

    report = runner.run(_spec(training, good, minilm_model, "CLASSIFICATION"))

    assert report.valid, report.errors
    assert report.labels == ["n", "p"]
    assert report.labelDistribution == {"n": 3, "p": 3}
    assert report.training is not None and report.training.records == 6
    assert report.training.overMaxSequenceLength == 1
    assert report.training.overMaxSequenceLengthLines == [f"{training}:6"]
    assert report.stepsPerEpoch == 2 and report.totalSteps == 4  # 6 records, 4 a batch
    assert report.estimate is not None and report.estimate.parameters > 20_000_000  # MiniLM

    unknown = _put(object_store, [{"text": "nice", "label": "p"}, {"text": "meh", "label": "x"}])
    report = runner.run(_spec(training, unknown, minilm_model, "CLASSIFICATION"))

    assert not report.valid
    assert report.errorCount == 1
    assert report.errors[0].startswith(f'{unknown}:2: label "x" is not a label')
    assert not any((tmp_path / "dry-runs").iterdir())


def test_preference_pairs_and_pre_training_chunks_are_the_examples_steps_count(
    object_store: ObjectStore, s3_environment: dict[str, str], demo_assets: None, tmp_path: Path
) -> None:
    model = "s3://demo/models/tiny-llama/"
    runner = _runner(tmp_path, s3_environment)
    pairs = _put(
        object_store,
        [
            {"prompt": f"Greet guest {i}:", "chosen": " Welcome!", "rejected": " What?"}
            for i in range(6)
        ],
    )

    report = runner.run(_spec(pairs, None, model, "PREFERENCE"))

    assert report.valid, report.errors
    assert report.training is not None and report.training.records == 6
    assert report.training.examples == 12  # each pair's two answers
    assert report.stepsPerEpoch == 2  # 6 pairs, 4 a batch
    assert report.estimate is not None and "reference pass" in report.estimate.assumption

    documents = _put(object_store, [{"text": "word " * 40}, {"text": "short text"}])
    report = runner.run(_spec(documents, None, model, "CONTINUED_PRE_TRAINING"))

    assert report.valid, report.errors
    assert report.training is not None and report.training.records == 2
    # The long document is split into maxSequenceLength (16) chunks, none of it dropped.
    assert report.training.examples is not None and report.training.examples > 2
    assert report.training.tokens is not None and report.training.tokens > 40
    assert report.totalSteps == 2 * -(-report.training.examples // 4)


def test_a_dry_run_past_its_time_limit_is_stopped_and_says_what_to_do(
    object_store: ObjectStore, s3_environment: dict[str, str], demo_assets: None, tmp_path: Path
) -> None:
    training = _put(object_store, [{"prompt": "1 + 1?", "completion": " 2"}])
    runner = _runner(tmp_path, s3_environment, timeout_seconds=0.5)
    spec = _spec(training, None, "s3://demo/models/tiny-llama/", "FINE_TUNING")

    with pytest.raises(DryRunTimedOut, match="TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS") as raised:
        runner.run(spec)

    assert "Create the job instead" in raised.value.message
    assert not any((tmp_path / "dry-runs").iterdir())
    # Its process group is gone: no dry run of ours is left running.
    found = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "dry-runs")], capture_output=True, check=False
    )
    assert found.stdout == b""


def test_a_python_without_the_trainers_packages_is_answered_as_such(
    object_store: ObjectStore, s3_environment: dict[str, str], demo_assets: None, tmp_path: Path
) -> None:
    # A real interpreter with none of the project's packages: a bare virtual environment.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    training = _put(object_store, [{"prompt": "1 + 1?", "completion": " 2"}])
    runner = _runner(tmp_path, s3_environment, python=str(bare / "bin" / "python"))

    with pytest.raises(DryRunUnavailable, match="trainer's packages"):
        runner.run(_spec(training, None, "s3://demo/models/tiny-llama/", "FINE_TUNING"))
    assert not any((tmp_path / "dry-runs").iterdir())


def test_a_stopping_server_kills_its_dry_runs_and_leftovers_are_removed_at_start(
    object_store: ObjectStore, s3_environment: dict[str, str], demo_assets: None, tmp_path: Path
) -> None:
    # A scratch directory of a dry run whose server died long ago, and one of another API
    # worker's dry run going on now (the folder is shared): only the old one goes.
    old = tmp_path / "dry-runs" / "left-by-a-dead-server"
    fresh = tmp_path / "dry-runs" / "another-workers-run"
    old.mkdir(parents=True)
    fresh.mkdir()
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    runner = _runner(tmp_path, s3_environment, timeout_seconds=300)
    assert not old.exists() and fresh.is_dir()
    fresh.rmdir()

    training = _put(object_store, [{"prompt": "1 + 1?", "completion": " 2"}])
    spec = _spec(training, None, "s3://demo/models/tiny-llama/", "FINE_TUNING")
    outcome: list[BaseException | JobValidationReport] = []

    def run() -> None:
        try:
            outcome.append(runner.run(spec))
        except BaseException as error:  # asserted below
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while (
        subprocess.run(
            ["pgrep", "-f", str(tmp_path / "dry-runs")], capture_output=True, check=False
        ).stdout
        == b""
    ):
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)

    runner.shutdown()
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], DryRunFailed), outcome
    found = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "dry-runs")], capture_output=True, check=False
    )
    assert found.stdout == b""
    assert not any((tmp_path / "dry-runs").iterdir())
