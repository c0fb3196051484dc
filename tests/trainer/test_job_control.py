"""Stop requests, SIGTERM and fencing, with the real trainer on the real object store."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

from jobstore.documents import JobControl, JobState, JobStatus, TrainerExit, utc_now
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from tests.trainer.jobs import (
    LONG_HYPERPARAMETERS,
    Demo,
    TrainerRun,
    committed_checkpoints,
    create_job,
    output_location,
    set_launch_attempt,
    wait_for,
)


def wait_until_training(store: JobStore, job_id: str, run: TrainerRun) -> JobStatus:
    """Wait until the heartbeat reports optimizer steps done while RUNNING."""

    def training() -> JobStatus | None:
        assert run.process.poll() is None, run.log()
        status, _ = store.get_status(job_id)
        return status if status.state is JobState.RUNNING and status.progress.step > 0 else None

    # Generous: starting Python, torch and the model took over 60 s on a CI machine
    # running other trainers; the stop timing asserted below starts only after this.
    result: JobStatus = wait_for(training, timeout=180, what="the first training steps")
    return result


def test_stop_request_while_running_ends_stopped_with_a_committed_checkpoint(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = create_job(
        job_store,
        training_uri=demo.train_uri,
        model_uri=demo.model_uri,
        hyper_parameters=LONG_HYPERPARAMETERS,
    )
    run = start_trainer(spec.jobId)
    wait_until_training(job_store, spec.jobId, run)

    job_store.put_control(spec.jobId, JobControl(stopRequested=True, stopRequestedAt=utc_now()))
    requested = time.monotonic()

    def stopped() -> JobStatus | None:
        status, _ = job_store.get_status(spec.jobId)
        return status if status.state is JobState.STOPPED else None

    status: JobStatus = wait_for(stopped, timeout=30, what="STOPPED")
    assert time.monotonic() - requested < 30
    assert run.wait(timeout=30) == TrainerExit.OK, run.log()
    assert status.progress.step < (status.progress.totalSteps or 0)  # it stopped early
    assert status.failure is None

    step = status.progress.step
    # Epoch ends were checkpointed too; the stop's own checkpoint is the newest.
    assert committed_checkpoints(object_store, spec)[-1] == step
    checkpoint = output_location(spec, "checkpoints", f"step-{step}")
    state = object_store.get_json(checkpoint.child("trainer_state.json"))
    assert state is not None and state[0]["progress"]["step"] == step
    assert object_store.head(checkpoint.child("model.safetensors")) is not None
    assert object_store.head(checkpoint.child("tokenizer.json")) is not None
    committed = object_store.get_json(checkpoint.child("COMMITTED"))
    assert committed is not None
    assert checkpoint.child("model.safetensors").key in committed[0]["files"]

    events = [(e.type, e.state) for e in job_store.list_events(spec.jobId)]
    assert events[-3:] == [
        ("STATE_CHANGED", JobState.STOPPING),
        ("CHECKPOINT_COMMITTED", None),
        ("STATE_CHANGED", JobState.STOPPED),
    ]


def test_sigterm_writes_a_checkpoint_and_exits_preempted_without_a_terminal_state(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = create_job(
        job_store,
        training_uri=demo.train_uri,
        model_uri=demo.model_uri,
        hyper_parameters=LONG_HYPERPARAMETERS,
    )
    run = start_trainer(spec.jobId)
    wait_until_training(job_store, spec.jobId, run)

    run.process.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == TrainerExit.PREEMPTED, run.log()

    status, _ = job_store.get_status(spec.jobId)
    assert status.state is JobState.RUNNING  # the reconciler decides what comes next
    assert status.failure is None
    step = committed_checkpoints(object_store, spec)[-1]
    assert step == status.progress.step
    assert 0 < step < (status.progress.totalSteps or 0)
    assert [e.type for e in job_store.list_events(spec.jobId)][-2:] == [
        "CHECKPOINT_COMMITTED",
        "PREEMPTED",
    ]


def test_trainer_of_an_older_attempt_exits_fenced_and_writes_nothing(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = create_job(job_store, training_uri=demo.train_uri, model_uri=demo.model_uri, attempt=2)
    before, etag = job_store.get_status(spec.jobId)

    run = start_trainer(spec.jobId, attempt=1)
    assert run.wait() == TrainerExit.FENCED, run.log()

    after, etag_after = job_store.get_status(spec.jobId)
    assert etag_after == etag
    assert after == before and after.state is JobState.QUEUED
    assert job_store.list_events(spec.jobId) == []
    assert object_store.head(job_store.log_location(spec.jobId, 1)) is None


def test_trainer_that_loses_its_job_while_running_exits_fenced_and_stops_writing(
    job_store: JobStore,
    object_store: ObjectStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    spec = create_job(
        job_store,
        training_uri=demo.train_uri,
        model_uri=demo.model_uri,
        hyper_parameters=LONG_HYPERPARAMETERS,
    )
    run = start_trainer(spec.jobId, attempt=1)
    wait_until_training(job_store, spec.jobId, run)
    # Frozen while the reconciler relaunches the job, so "before" is well defined.
    run.process.send_signal(signal.SIGSTOP)
    events_before = len(job_store.list_events(spec.jobId))
    checkpoints_before = committed_checkpoints(object_store, spec)
    set_launch_attempt(job_store, spec.jobId, 2)  # the reconciler relaunched the job
    _, etag = job_store.get_status(spec.jobId)
    run.process.send_signal(signal.SIGCONT)
    assert run.wait(timeout=30) == TrainerExit.FENCED, run.log()

    status, etag_after = job_store.get_status(spec.jobId)
    assert etag_after == etag, json.dumps(status.model_dump(mode="json"))
    assert status.state is JobState.RUNNING
    # At most the one epoch-end checkpoint whose ownership check had passed just before
    # the freeze may still land; nothing else is written.
    new_events = job_store.list_events(spec.jobId)[events_before:]
    assert [e.type for e in new_events] in ([], ["CHECKPOINT_COMMITTED"])
    new_checkpoints = set(committed_checkpoints(object_store, spec)) - set(checkpoints_before)
    assert len(new_checkpoints) == len(new_events)
