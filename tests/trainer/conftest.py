"""Helpers for the trainer tests: demo assets in the test store, jobs set up without the
API, and the real trainer run as a subprocess (`python -m trainer`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.demo import MODEL_PREFIX, TRAIN_KEY, VALIDATION_KEY, build_demo_model, seed_demo
from service.documents import (
    DataLocation,
    HyperParameters,
    JobSpec,
    JobStatus,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from service.storage import ObjectStore
from service.store import JobStore

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_BUCKET = "trainer-state"
DEMO_BUCKET = "trainer-demo"
DATA_BUCKET = "trainer-data"
OUTPUT_URI = "s3://trainer-output/jobs"
HEARTBEAT_SECONDS = 0.5

# Small and quick: one epoch of the demo data is 38 steps of a 0.15M-parameter model.
FAST_HYPERPARAMETERS: dict[str, Any] = {
    "epochCount": 2,
    "batchSize": 8,
    "learningRate": 0.003,
    "learningRateWarmupSteps": 5,
    "maxSequenceLength": 64,
}


@dataclass
class Demo:
    bucket: str

    @property
    def model_uri(self) -> str:
        return f"s3://{self.bucket}/{MODEL_PREFIX}"

    @property
    def train_uri(self) -> str:
        return f"s3://{self.bucket}/{TRAIN_KEY}"

    @property
    def validation_uri(self) -> str:
        return f"s3://{self.bucket}/{VALIDATION_KEY}"


@pytest.fixture(scope="session")
def demo(object_store: ObjectStore) -> Demo:
    """The demo assets, seeded into the test store exactly as the API server does."""
    for bucket in (STATE_BUCKET, DATA_BUCKET, "trainer-output"):
        object_store.ensure_bucket(bucket)
    seed_demo(object_store, DEMO_BUCKET)
    return Demo(DEMO_BUCKET)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-model")
    build_demo_model(directory)
    return directory


@pytest.fixture
def job_store(object_store: ObjectStore, demo: Demo) -> JobStore:
    return JobStore(object_store, STATE_BUCKET)


def create_job(
    store: JobStore,
    *,
    training_uri: str,
    model_uri: str,
    validation_uri: str | None = None,
    hyper_parameters: dict[str, Any] | None = None,
    attempt: int = 1,
) -> JobSpec:
    """A job as the API and reconciler leave it for attempt `attempt`: spec, QUEUED
    status, and a launch record."""
    job_id = new_job_id()
    spec = JobSpec(
        jobId=job_id,
        jobName=f"test-{job_id}",
        createdAt=utc_now(),
        baseModelIdentifier=model_uri,
        trainingDataConfig=DataLocation(s3Uri=training_uri),
        validationDataConfig=DataLocation(s3Uri=validation_uri) if validation_uri else None,
        outputDataConfig=DataLocation(s3Uri=OUTPUT_URI),
        hyperParameters=HyperParameters(**(hyper_parameters or FAST_HYPERPARAMETERS)),
    )
    store.create(spec)
    launch = LaunchRecord(
        attempt=attempt, launcher="test", host="localhost", launchedAt=utc_now(), launchedBy="test"
    )

    def launched(status: JobStatus) -> JobStatus:
        changed = status.model_copy(deep=True)
        changed.launch = launch
        return changed

    store.update_status(job_id, launched)
    return spec


def trainer_environment(
    s3_environment: dict[str, str], *, attempt: int = 1, log_file: Path | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env |= s3_environment
    env |= {
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "TUNEFORGE_STATE_BUCKET": STATE_BUCKET,
        "TUNEFORGE_ATTEMPT": str(attempt),
        "TUNEFORGE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    }
    if log_file is not None:
        env["TUNEFORGE_LOG_FILE"] = str(log_file)
    return env


@dataclass
class TrainerRun:
    process: subprocess.Popen[bytes]
    log_file: Path

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@pytest.fixture
def start_trainer(
    s3_environment: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., TrainerRun]]:
    """Start `python -m trainer --job-id <id>` like the local launcher: its own working
    directory, stdout and stderr into the log file named by TUNEFORGE_LOG_FILE."""
    runs: list[TrainerRun] = []

    def start(job_id: str, *, attempt: int = 1) -> TrainerRun:
        workdir = tmp_path / f"work-{job_id}-{attempt}"
        workdir.mkdir()
        log_file = tmp_path / f"trainer-{job_id}-{attempt}.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "trainer", "--job-id", job_id],
                cwd=workdir,
                env=trainer_environment(s3_environment, attempt=attempt, log_file=log_file),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        run = TrainerRun(process, log_file)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
