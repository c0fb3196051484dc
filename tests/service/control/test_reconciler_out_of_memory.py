"""The reconciler on a real store: a trainer a cluster reports out of memory is not
retried; the job fails with OUT_OF_MEMORY and a message that says what to change.

The launcher here is a scripted stand-in for a cluster (what Kubernetes reports for an
OOMKilled pod, `service/control/launch/kubernetes_status.py` `observed_from_status`); the store and
the reconciler are the real ones.
"""

from __future__ import annotations

import signal
from pathlib import Path

from jobstore.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobSpec,
    JobState,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.store import JobStore
from service.control.launch.base import Observed, Started
from service.control.reconciler import Reconciler


class ClusterReportingOutOfMemory:
    """Starts nothing; every attempt it launched is reported OOMKilled."""

    name = "scripted-cluster"

    def __init__(self) -> None:
        self.started: list[int] = []

    def start(self, spec: JobSpec, attempt: int, environment: dict[str, str]) -> Started:
        self.started.append(attempt)
        return Started(host=f"cluster/{spec.jobId}-a{attempt}", pid=None, process_start_ticks=None)

    def observe(self, launch: LaunchRecord) -> Observed:
        return Observed(
            alive=False,
            exit_code=137,
            reason="out of memory (OOMKilled: the container passed its memory limit)",
        )

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        pass

    def local_log(self, job_id: str, attempt: int) -> Path | None:
        return None

    def release(self, job_id: str) -> None:
        return None  # nothing outlives the trainer's process

    def shutdown(self, grace_seconds: float) -> None:
        pass


def test_out_of_memory_fails_the_job_without_a_retry(store: JobStore) -> None:
    spec = JobSpec(
        jobId=new_job_id(),
        jobName="oom",
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )
    store.create(spec)
    launcher = ClusterReportingOutOfMemory()
    reconciler = Reconciler(store, launcher, {}, crash_retry_budget=2)

    for _ in range(4):  # launch, observe the OOM, then nothing more to do
        reconciler.run_once()

    status, _ = store.get_status(spec.jobId)
    assert launcher.started == [1], "an out-of-memory attempt must not be relaunched"
    assert status.state == JobState.FAILED
    assert status.failure is not None
    assert status.failure.reason == FailureReason.OUT_OF_MEMORY
    assert "OOMKilled" in status.failure.message
    assert "batchSize" in status.failure.message and "LORA" in status.failure.message
    assert not [event for event in store.list_events(spec.jobId) if event.type == "RETRY"]
