"""The reconciler's part in pause and resume, on a real store: a job paused before its
launch is PAUSED with no trainer; a PAUSED job holds no slot; a resumed job is QUEUED
again and its next attempt is numbered after the earlier ones; a trainer that died with
a pause pending leaves the job PAUSED (not relaunched); a paused job stops STOPPED.

The trainers are `sleep` processes (tests/service/control/test_gpu_queue.py); what a
real trainer does on a pause (a committed checkpoint, then PAUSED) is in
tests/e2e/test_pause_resume.py.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobControl,
    JobSpec,
    JobState,
    JobStatus,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.store import JobStore
from service.control.launch.base import Observed
from service.control.reconciler import Reconciler
from tests.service.control.test_gpu_queue import SleepingTrainers


def _create(store: JobStore, name: str, created_ms: int) -> str:
    spec = JobSpec(
        jobId=new_job_id(created_ms),
        jobName=name,
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )
    store.create(spec)
    return spec.jobId


def _pause(store: JobStore, job_id: str) -> None:
    store.put_control(job_id, JobControl(pauseRequested=True, pauseRequestedAt=utc_now()))


def _resume(store: JobStore, job_id: str) -> None:
    store.put_control(job_id, JobControl())


def _paused_by_its_trainer(store: JobStore, job_id: str) -> None:
    """What a trainer writes on its way out after a pause."""

    def pause(status: JobStatus) -> JobStatus:
        return status.moved_to(JobState.PAUSED)

    store.update_status(job_id, pause)


def _state(store: JobStore, job_id: str) -> JobState:
    return store.get_status(job_id)[0].state


def test_paused_before_launch_then_resumed(store: JobStore) -> None:
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=0)  # nothing launches yet
    job_id = _create(store, "early", int(time.time() * 1000))
    try:
        _pause(store, job_id)
        reconciler.run_once()
        status, _ = store.get_status(job_id)
        assert status.state == JobState.PAUSED and status.launch is None
        assert store.queue_order.position(job_id) is None  # not in the queue

        _resume(store, job_id)
        tenant = store.get_spec(job_id).tenant
        store.queue_ledger.reserve(tenant, job_id, 10)  # as the resume does
        reconciler.run_once()
        assert _state(store, job_id) == JobState.QUEUED
        reconciler.run_once()
        assert job_id in store.queue_ledger.read(tenant)[0]  # kept its place while queued
        reconciler.slots = 1
        reconciler.run_once()
        status, _ = store.get_status(job_id)
        assert status.launch is not None and status.launch.attempt == 1
    finally:
        trainers.shutdown(0)


def test_a_paused_job_frees_its_slot_and_resumes_as_its_next_attempt(store: JobStore) -> None:
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1)
    now = int(time.time() * 1000)
    first = _create(store, "first", now)
    second = _create(store, "second", now + 1)
    try:
        reconciler.run_once()
        assert set(trainers.processes) == {first}  # one slot

        _pause(store, first)
        _paused_by_its_trainer(store, first)
        trainers.end(first)  # the trainer leaves
        reconciler.run_once()
        assert _state(store, first) == JobState.PAUSED  # not relaunched
        assert second in trainers.processes  # the paused job's slot went to the next

        _resume(store, first)
        reconciler.run_once()
        status, _ = store.get_status(first)
        assert (status.state, status.launch, status.previousAttempts) == (
            JobState.QUEUED,
            None,
            1,
        )
        trainers.end(second)  # a crash: relaunched (its attempt 2) ahead of nothing else
        reconciler.slots = 2
        reconciler.run_once()
        reconciler.run_once()
        status, _ = store.get_status(first)
        assert status.launch is not None and status.launch.attempt == 2
        events = [event.message for event in store.list_events(first)]
        assert any("trainer attempt 2 launched" in message for message in events), events
    finally:
        trainers.shutdown(0)


def test_a_trainer_gone_with_a_pause_pending_leaves_the_job_paused(store: JobStore) -> None:
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1)
    job_id = _create(store, "crashed", int(time.time() * 1000))
    try:
        reconciler.run_once()
        _pause(store, job_id)
        trainers.end(job_id)  # died before it could pause
        reconciler.run_once()
        status, _ = store.get_status(job_id)
        assert status.state == JobState.PAUSED
        assert status.launch is not None and status.launch.attempt == 1  # no relaunch

        store.put_control(
            job_id,
            JobControl(
                pauseRequested=True,
                pauseRequestedAt=utc_now(),
                stopRequested=True,
                stopRequestedAt=utc_now(),
            ),
        )
        reconciler.run_once()
        assert _state(store, job_id) == JobState.STOPPED
        assert job_id not in store.list_active_job_ids()
    finally:
        trainers.shutdown(0)


class TrainersOnAnotherHost(SleepingTrainers):
    """What a replica sees of trainers another replica started: nothing (alive None), so
    it judges them by their signs of life in the store."""

    def observe(self, launch: LaunchRecord) -> Observed:
        return Observed(alive=None)


def test_a_resumed_attempt_is_not_judged_by_the_paused_attempts_old_heartbeat(
    store: JobStore,
) -> None:
    trainers = TrainersOnAnotherHost()
    reconciler = Reconciler(store, trainers, {}, slots=1, heartbeat_timeout_seconds=60)
    job_id = _create(store, "long-pause", int(time.time() * 1000))
    try:
        _pause(store, job_id)
        reconciler.run_once()  # paused before it was launched

        def heartbeat_long_ago(status: JobStatus) -> JobStatus:
            # The last heartbeat of an attempt paused for ten minutes.
            old = status.model_copy(deep=True)
            old.heartbeatAt = "2026-01-01T00:00:00.000Z"
            return old

        store.update_status(job_id, heartbeat_long_ago)
        _resume(store, job_id)
        reconciler.run_once()  # QUEUED
        reconciler.run_once()  # launched: attempt 1, just now
        reconciler.run_once()  # seen from "another host": alive by its launch time
        status, _ = store.get_status(job_id)
        assert status.launch is not None and status.launch.attempt == 1, status
        assert status.retries == {}  # not relaunched as if it had died
    finally:
        trainers.shutdown(0)


def test_a_stop_judged_on_a_stale_view_leaves_a_launched_job_active(store: JobStore) -> None:
    """A pass that read the job before another pass launched it decides 'stopped before
    it was launched'; its compare-and-swap is refused (the job has an attempt now), and
    the job must stay in `active/` so a later pass stops its trainer, not vanish from it
    unfinished."""
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1)
    job_id = _create(store, "stale", int(time.time() * 1000))
    try:
        stale = store.get(job_id)  # QUEUED, no launch
        reconciler.run_once()
        assert job_id in trainers.processes  # launched meanwhile

        store.put_control(job_id, JobControl(stopRequested=True, stopRequestedAt=utc_now()))
        reconciler.reconcile(replace(stale, control=store.get_control(job_id)))
        assert job_id in store.list_active_job_ids()
        assert not _state(store, job_id).is_terminal()

        trainers.end(job_id)  # the trainer leaves on the stop
        reconciler.run_once()
        assert _state(store, job_id) == JobState.STOPPED
    finally:
        trainers.shutdown(0)


def test_attempts_a_pause_ended_do_not_count_against_max_attempts(store: JobStore) -> None:
    """With at most two attempts, a job paused during attempt 1 and resumed may still
    crash once (attempt 2) and be relaunched (attempt 3); the next crash ends it."""
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1, max_attempts=2, crash_retry_budget=10)
    job_id = _create(store, "budget", int(time.time() * 1000))
    try:
        reconciler.run_once()
        _pause(store, job_id)
        _paused_by_its_trainer(store, job_id)
        trainers.end(job_id)
        reconciler.run_once()
        _resume(store, job_id)
        reconciler.run_once()  # QUEUED again, previousAttempts 1
        reconciler.run_once()  # attempt 2
        status, _ = store.get_status(job_id)
        assert status.launch is not None and status.launch.attempt == 2

        trainers.end(job_id)  # a crash
        reconciler.run_once()
        status, _ = store.get_status(job_id)
        assert status.state != JobState.FAILED
        assert status.launch is not None and status.launch.attempt == 3

        trainers.end(job_id)  # a second crash since the resume: the budget is spent
        reconciler.run_once()
        status, _ = store.get_status(job_id)
        assert status.state == JobState.FAILED and status.failure is not None
        assert (
            "attempt 2 of at most 2 since the job was resumed (attempt 3 in all)"
            in status.failure.message
        ), status.failure.message
    finally:
        trainers.shutdown(0)


class SignalledTrainers(SleepingTrainers):
    """Sleeping trainers that receive the signals the reconciler sends."""

    def __init__(self) -> None:
        super().__init__()
        self.signals: list[signal.Signals] = []

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        self.signals.append(which)
        assert launch.pid is not None
        os.kill(launch.pid, which)


def test_a_trainer_that_lingers_after_pausing_holds_its_slot_until_it_is_terminated(
    store: JobStore,
) -> None:
    trainers = SignalledTrainers()
    reconciler = Reconciler(
        store, trainers, {}, slots=1, stop_grace_seconds=0.5, kill_grace_seconds=30
    )
    now = int(time.time() * 1000)
    first = _create(store, "lingers", now)
    second = _create(store, "next", now + 1)
    try:
        reconciler.run_once()
        _pause(store, first)
        _paused_by_its_trainer(store, first)  # ... and its process does not exit
        reconciler.run_once()
        assert _state(store, first) == JobState.PAUSED
        assert second not in trainers.processes  # the slot is still taken
        assert trainers.signals == []  # within the grace period

        time.sleep(0.6)
        reconciler.run_once()
        assert trainers.signals == [signal.SIGTERM]
        trainers.processes[first].wait(timeout=10)
        reconciler.run_once()
        assert second in trainers.processes  # gone: its slot went to the next job
        assert _state(store, first) == JobState.PAUSED
    finally:
        trainers.shutdown(0)


def test_a_resume_that_came_while_the_trainer_was_pausing_gets_a_queue_place(
    store: JobStore,
) -> None:
    """The API takes a queue place for a resume only when the job is PAUSED; one that
    lands while the trainer is still on its way to PAUSED gets its place when the
    reconciler queues the job again, so it is counted against its tenant's queue."""
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1)
    job_id = _create(store, "early-resume", int(time.time() * 1000))
    tenant = store.get_spec(job_id).tenant
    try:
        reconciler.run_once()
        assert job_id in trainers.processes
        assert job_id not in store.queue_ledger.read(tenant)[0]  # launched: place given back
        _pause(store, job_id)
        _resume(store, job_id)  # before the trainer wrote PAUSED: no place taken
        _paused_by_its_trainer(store, job_id)  # it had seen the pause already
        trainers.end(job_id)
        reconciler.slots = 0  # nothing launches: the job waits in the queue
        reconciler.run_once()
        assert _state(store, job_id) == JobState.QUEUED
        assert job_id in store.queue_ledger.read(tenant)[0]
        reconciler.run_once()
        assert job_id in store.queue_ledger.read(tenant)[0]  # kept while it waits
    finally:
        trainers.shutdown(0)


def test_a_paused_job_stopped_while_its_trainer_lingers_ends_once_the_trainer_is_gone(
    store: JobStore,
) -> None:
    trainers = SignalledTrainers()
    reconciler = Reconciler(store, trainers, {}, slots=1, stop_grace_seconds=60)
    now = int(time.time() * 1000)
    first = _create(store, "stopped-lingering", now)
    second = _create(store, "after-it", now + 1)
    try:
        reconciler.run_once()
        _pause(store, first)
        _paused_by_its_trainer(store, first)  # its process still exits
        store.put_control(first, JobControl(stopRequested=True, stopRequestedAt=utc_now()))
        reconciler.run_once()
        assert _state(store, first) == JobState.PAUSED  # not STOPPED with a trainer alive
        assert second not in trainers.processes  # and it keeps its slot

        trainers.end(first)
        reconciler.run_once()
        reconciler.run_once()
        assert _state(store, first) == JobState.STOPPED
        assert second in trainers.processes
    finally:
        trainers.shutdown(0)
