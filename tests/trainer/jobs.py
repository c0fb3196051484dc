"""Helpers for the trainer tests: jobs set up the way the API and the reconciler leave
them (no API server needed), and the real trainer run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobResources,
    JobSpec,
    JobStatus,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from jobstore.store import JobStore
from service.server.demo import MODEL_PREFIX, TRAIN_KEY, VALIDATION_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_BUCKET = "trainer-state"
DEMO_BUCKET = "trainer-demo"
DATA_BUCKET = "trainer-data"
OUTPUT_BUCKET = "trainer-output"
HEARTBEAT_SECONDS = 0.5

# Small and quick: an epoch of the demo data is 38 steps of a 0.15M-parameter model.
FAST_HYPERPARAMETERS: dict[str, Any] = {
    "epochCount": 2,
    "batchSize": 8,
    "learningRate": 0.003,
    "learningRateWarmupSteps": 5,
    "maxSequenceLength": 64,
}
# Long enough (3,800 steps, about a minute) to still be running when a test acts on it.
LONG_HYPERPARAMETERS: dict[str, Any] = FAST_HYPERPARAMETERS | {"epochCount": 100}


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


def create_job(
    store: JobStore,
    *,
    training_uri: str,
    model_uri: str,
    validation_uri: str | None = None,
    hyper_parameters: dict[str, Any] | None = None,
    attempt: int = 1,
    resources: dict[str, Any] | None = None,
    customization_type: str = "FINE_TUNING",
) -> JobSpec:
    """A job as the API and the reconciler leave it for launch attempt `attempt`: the
    spec, a QUEUED status, and the launch record naming that attempt."""
    job_id = new_job_id()
    spec = JobSpec(
        jobId=job_id,
        jobName=f"test-{job_id}",
        createdAt=utc_now(),
        baseModelIdentifier=model_uri,
        customizationType=customization_type,
        trainingDataConfig=DataLocation(s3Uri=training_uri),
        validationDataConfig=DataLocation(s3Uri=validation_uri) if validation_uri else None,
        outputDataConfig=DataLocation(s3Uri=f"s3://{OUTPUT_BUCKET}/jobs"),
        hyperParameters=HyperParameters(**(hyper_parameters or FAST_HYPERPARAMETERS)),
        resources=JobResources(**(resources or {})),
    )
    store.create(spec)
    set_launch_attempt(store, job_id, attempt)
    return spec


def set_launch_attempt(store: JobStore, job_id: str, attempt: int) -> None:
    """What the reconciler does when it launches (or relaunches) a job."""
    launch = LaunchRecord(
        attempt=attempt, launcher="test", host="localhost", launchedAt=utc_now(), launchedBy="test"
    )

    def launched(status: JobStatus) -> JobStatus:
        changed = status.model_copy(deep=True)
        changed.launch = launch
        return changed

    store.update_status(job_id, launched)


def output_location(spec: JobSpec, *parts: str) -> S3Location:
    output = parse_s3_uri(spec.output_prefix, field="output")
    return output.child(*parts) if parts else output


def committed_checkpoints(storage: ObjectStore, spec: JobSpec) -> list[int]:
    """Steps of the checkpoints whose COMMITTED marker exists."""
    prefix = output_location(spec, "checkpoints").as_prefix()
    steps = []
    for item in storage.list_objects(prefix):
        relative = item["key"][len(prefix.key) :]
        folder, _, name = relative.partition("/")
        if name == "COMMITTED":
            steps.append(int(folder.removeprefix("step-")))
    return sorted(steps)


def trainer_environment(
    s3_environment: dict[str, str], *, attempt: int = 1, log_file: Path | None = None
) -> dict[str, str]:
    """What a launcher gives the trainer, and nothing else from this process."""
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


def trainer_command(job_id: str, processes: int = 1) -> list[str]:
    """`python -m trainer`, or torchrun with `processes` ranks on this host (gloo on a
    CPU), as the local launcher runs them."""
    if processes == 1:
        return [sys.executable, "-m", "trainer", "--job-id", job_id]
    return [
        sys.executable,
        "-m",
        "trainer.torchrun",
        "--nproc-per-node",
        str(processes),
        "--standalone",
        "-m",
        "trainer",
        "--job-id",
        job_id,
    ]


def start_trainer_process(
    job_id: str,
    *,
    attempt: int,
    s3_environment: dict[str, str],
    directory: Path,
    processes: int = 1,
) -> TrainerRun:
    """`python -m trainer --job-id <id>` the way the local launcher starts it: its own
    working directory, stdout and stderr into the file named by TUNEFORGE_LOG_FILE;
    under torchrun with `processes` > 1."""
    workdir = directory / f"work-{job_id}-{attempt}"
    workdir.mkdir()
    log_file = directory / f"trainer-{job_id}-{attempt}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            trainer_command(job_id, processes),
            cwd=workdir,
            env=trainer_environment(s3_environment, attempt=attempt, log_file=log_file),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return TrainerRun(process, log_file)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
