"""Exact resume: the real trainer, killed (SIGKILL) or preempted (SIGTERM) mid-training on
the real object store, restarted as the next attempt, ends with the same weights, bit for
bit, as a run that was never interrupted (CPU, deterministic algorithms). Also: old
checkpoints are pruned and the checkpoint listing carries each one's step, epoch and
metrics.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import JobSpec, JobState, TrainerExit
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.core import jobs
from service.server.embedded_s3 import EmbeddedS3
from tests.conftest import ACCESS_KEY, SECRET_KEY
from tests.trainer.jobs import (
    FAST_HYPERPARAMETERS,
    STATE_BUCKET,
    Demo,
    TrainerRun,
    committed_checkpoints,
    create_job,
    output_location,
    set_launch_attempt,
    start_trainer_process,
    wait_for,
)

# 300 records in batches of 4: 75 steps an epoch, 225 in all. Checkpoints every 7 steps
# (7 does not divide 75, so most are mid-epoch) and at each epoch end; evaluations at
# epoch ends.
RESUME_HYPERPARAMETERS: dict[str, Any] = FAST_HYPERPARAMETERS | {
    "epochCount": 3,
    "batchSize": 4,
    "checkpointIntervalSteps": 7,
    "keepCheckpoints": 2,
}
TOTAL_STEPS = 225
# Three or four trainer runs of a few minutes each on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1800)
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"


def new_job(store: JobStore, demo: Demo) -> JobSpec:
    return create_job(
        store,
        training_uri=demo.train_uri,
        validation_uri=demo.validation_uri,
        model_uri=demo.model_uri,
        hyper_parameters=RESUME_HYPERPARAMETERS,
    )


def final_weights(storage: ObjectStore, spec: JobSpec) -> bytes:
    found = storage.get_bytes(output_location(spec, "model", "model.safetensors"))
    assert found is not None, "no final model"
    return found[0]


def training_csv(storage: ObjectStore, spec: JobSpec) -> str:
    found = storage.get_bytes(output_location(spec, TRAINING_CSV))
    assert found is not None
    return found[0].decode()


def event_messages(store: JobStore, spec: JobSpec, kind: str) -> list[str]:
    return [e.message for e in store.list_events(spec.jobId) if e.type == kind]


def assert_completed(store: JobStore, spec: JobSpec, run: TrainerRun) -> None:
    assert run.wait(timeout=600) == TrainerExit.OK, run.log()
    status, _ = store.get_status(spec.jobId)
    assert status.state is JobState.COMPLETED, run.log()
    assert status.progress.step == TOTAL_STEPS


@dataclass
class Reference:
    """A run that was never interrupted; started once, concurrently with the tests."""

    spec: JobSpec
    run: TrainerRun
    store: JobStore
    storage: ObjectStore

    def finished(self) -> Reference:
        if self.run.process.returncode is None:
            assert_completed(self.store, self.spec, self.run)
        return self


@pytest.fixture(scope="module")
def reference(
    object_store: ObjectStore,
    demo: Demo,
    s3_server: EmbeddedS3,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:
    store = JobStore(object_store, STATE_BUCKET)
    s3_environment = {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    spec = new_job(store, demo)
    run = start_trainer_process(
        spec.jobId,
        attempt=1,
        s3_environment=s3_environment,
        directory=tmp_path_factory.mktemp("reference"),
    )
    yield Reference(spec, run, store, object_store)
    if run.process.poll() is None:
        run.process.kill()
        run.process.wait()


def restart(store: JobStore, spec: JobSpec, start: Callable[..., TrainerRun]) -> TrainerRun:
    """What the reconciler does for a dead trainer: the next attempt, same job."""
    set_launch_attempt(store, spec.jobId, 2)
    return start(spec.jobId, attempt=2)


def test_sigkill_mid_epoch_then_restart_ends_with_bitwise_the_same_weights(
    reference: Reference,
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = new_job(job_store, demo)
    run = start_trainer(spec.jobId)

    def checkpointed() -> list[int]:
        assert run.process.poll() is None, run.log()
        return committed_checkpoints(object_store, spec)

    wait_for(checkpointed, timeout=600, what="a committed checkpoint")
    run.process.kill()  # SIGKILL: no checkpoint, no goodbye; maybe an upload cut short
    run.wait()
    newest = committed_checkpoints(object_store, spec)[-1]
    status, _ = job_store.get_status(spec.jobId)
    assert 0 < newest < TOTAL_STEPS and status.state is JobState.RUNNING

    resumed = restart(job_store, spec, start_trainer)
    assert_completed(job_store, spec, resumed)
    epoch = -(-newest // 75)  # the epoch of step `newest`, 75 steps an epoch
    assert event_messages(job_store, spec, "RESUMED") == [
        f"resumed from step {newest} (epoch {epoch})"
    ]
    assert f"resumed from step {newest}" in resumed.log()

    reference.finished()
    # The same loss at every step (the metrics file went on from the checkpoint) and the
    # same final weights, bit for bit.
    assert training_csv(object_store, spec) == training_csv(object_store, reference.spec)
    assert final_weights(object_store, spec) == final_weights(object_store, reference.spec)


def test_sigterm_commits_a_checkpoint_and_the_restart_continues_from_that_step(
    reference: Reference,
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = new_job(job_store, demo)
    run = start_trainer(spec.jobId)

    def training() -> bool:
        assert run.process.poll() is None, run.log()
        status, _ = job_store.get_status(spec.jobId)
        return status.state is JobState.RUNNING and status.progress.step > 0

    wait_for(training, timeout=600, what="training steps")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == TrainerExit.PREEMPTED, run.log()
    status, _ = job_store.get_status(spec.jobId)
    step = status.progress.step
    assert 0 < step < TOTAL_STEPS
    assert committed_checkpoints(object_store, spec)[-1] == step

    resumed = restart(job_store, spec, start_trainer)
    assert_completed(job_store, spec, resumed)
    [message] = event_messages(job_store, spec, "RESUMED")
    assert message.startswith(f"resumed from step {step} ")
    reference.finished()
    assert final_weights(object_store, spec) == final_weights(object_store, reference.spec)


def test_only_the_newest_checkpoints_are_kept_and_listed_with_their_metrics(
    reference: Reference, object_store: ObjectStore
) -> None:
    spec = reference.finished().spec
    # 7, 14, ..., 224 and the epoch ends 75, 150, 225 were committed; keepCheckpoints 2.
    assert committed_checkpoints(object_store, spec) == [224, 225]
    # No object of a pruned checkpoint is left (the store may keep empty "folders").
    prefix = output_location(spec, "checkpoints").as_prefix()
    folders = {
        item["key"][len(prefix.key) :].split("/")[0] for item in object_store.list_objects(prefix)
    }
    assert folders == {"step-224", "step-225"}
    assert object_store.head(output_location(spec, "model", "model.safetensors")) is not None

    listed = jobs.list_checkpoints(reference.store, spec.jobId, tenant=spec.tenant)
    assert [(c.step, c.epoch) for c in listed] == [(224, 3), (225, 3)]
    mid_epoch, epoch_end = listed
    assert mid_epoch.trainingLoss is not None and mid_epoch.validationLoss is None
    assert epoch_end.trainingLoss is not None and epoch_end.validationLoss is not None
    status, _ = reference.store.get_status(spec.jobId)
    assert epoch_end.validationLoss == pytest.approx(status.progress.validationLoss)
    assert epoch_end.s3Uri == output_location(spec, "checkpoints", "step-225").uri + "/"


def test_a_checkpoint_folder_without_its_marker_is_never_resumed_from(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
    tmp_path: Path,
) -> None:
    spec = new_job(job_store, demo)
    # What a trainer killed mid-upload leaves: files, no COMMITTED.
    partial = output_location(spec, "checkpoints", "step-100")
    object_store.put_bytes(partial.child("trainer_state.json"), b"{not json")
    set_launch_attempt(job_store, spec.jobId, 2)
    run = start_trainer(spec.jobId, attempt=2)
    assert_completed(job_store, spec, run)
    assert event_messages(job_store, spec, "RESUMED") == []
    assert object_store.head(partial.child("trainer_state.json")) is None  # pruned
