"""The trainer's status writes on the real store: fencing, phase moves on a resumed
attempt, and FAILED never overwriting an ended job."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstore.documents import Failure, FailureReason, JobState, JobStatus
from jobstore.store import JobStore
from tests.trainer.jobs import Demo, create_job, set_launch_attempt
from trainer.errors import Fenced
from trainer.reporting import Reporter


def new_job(store: JobStore, demo: Demo, *, state: JobState = JobState.QUEUED) -> str:
    spec = create_job(store, training_uri=demo.train_uri, model_uri=demo.model_uri)
    path = {
        JobState.QUEUED: [],
        JobState.RUNNING: [JobState.VALIDATING, JobState.RUNNING],
        JobState.STOPPED: [JobState.STOPPED],
    }[state]
    for step in path:

        def move(status: JobStatus, to: JobState = step) -> JobStatus:
            return status.moved_to(to)

        store.update_status(spec.jobId, move)
    return spec.jobId


def test_state_changes_are_written_with_an_event(job_store: JobStore, demo: Demo) -> None:
    job_id = new_job(job_store, demo)
    reporter = Reporter(job_store, job_id, attempt=1)
    assert reporter.move_to(JobState.VALIDATING, "checking")
    status, _ = job_store.get_status(job_id)
    assert status.state is JobState.VALIDATING and status.heartbeatAt is not None
    [event] = job_store.list_events(job_id)
    assert (event.type, event.state, event.message) == (
        "STATE_CHANGED",
        JobState.VALIDATING,
        "VALIDATING: checking",
    )


def test_a_resumed_attempt_does_not_move_back_to_an_earlier_phase(
    job_store: JobStore, demo: Demo
) -> None:
    job_id = new_job(job_store, demo, state=JobState.RUNNING)
    reporter = Reporter(job_store, job_id, attempt=1)
    assert not reporter.move_to(JobState.VALIDATING, "checking again")
    assert not reporter.move_to(JobState.RUNNING, "training again")
    status, _ = job_store.get_status(job_id)
    assert status.state is JobState.RUNNING
    assert job_store.list_events(job_id) == []


def test_failed_does_not_overwrite_an_ended_job(job_store: JobStore, demo: Demo) -> None:
    job_id = new_job(job_store, demo, state=JobState.STOPPED)
    reporter = Reporter(job_store, job_id, attempt=1)
    assert not reporter.fail(Failure(reason=FailureReason.INTERNAL, message="boom"))
    status, _ = job_store.get_status(job_id)
    assert status.state is JobState.STOPPED and status.failure is None


def test_every_write_of_a_superseded_attempt_is_refused(job_store: JobStore, demo: Demo) -> None:
    job_id = new_job(job_store, demo)
    set_launch_attempt(job_store, job_id, 2)
    _, etag = job_store.get_status(job_id)
    reporter = Reporter(job_store, job_id, attempt=1)
    with pytest.raises(Fenced):
        reporter.heartbeat()
    assert reporter.fenced.is_set()
    with pytest.raises(Fenced):
        reporter.move_to(JobState.VALIDATING, "checking")
    with pytest.raises(Fenced):
        reporter.fail(Failure(reason=FailureReason.INTERNAL, message="boom"))
    reporter.event("SOMETHING", "after fencing")  # dropped
    assert job_store.get_status(job_id)[1] == etag
    assert job_store.list_events(job_id) == []


def test_the_log_is_uploaded_before_the_job_is_seen_ended(
    job_store: JobStore, demo: Demo, tmp_path: Path
) -> None:
    """A reader who sees COMPLETED and fetches the log at once finds it up to the end
    (the heartbeat's periodic upload never ran here)."""
    job_id = new_job(job_store, demo, state=JobState.RUNNING)
    log_file = tmp_path / "trainer.log"
    log_file.write_text("step 12/12 loss 0.5\n")
    reporter = Reporter(job_store, job_id, attempt=1, log_file=log_file)
    assert job_store.storage.get_bytes(job_store.log_location(job_id, 1)) is None
    assert reporter.move_to(JobState.COMPLETED, "the model is saved")
    found = job_store.storage.get_bytes(job_store.log_location(job_id, 1))
    assert found is not None and found[0] == b"step 12/12 loss 0.5\n"


def test_a_superseded_attempt_uploads_nothing_as_it_tries_to_end(
    job_store: JobStore, demo: Demo
) -> None:
    """The metrics live in the job's output, shared by its attempts: a trainer that lost
    its job must not write its files over the owner's on its way to COMPLETED."""
    job_id = new_job(job_store, demo, state=JobState.RUNNING)
    set_launch_attempt(job_store, job_id, 2)
    reporter = Reporter(job_store, job_id, attempt=1)
    uploads: list[str] = []
    reporter.add_periodic_upload(lambda: uploads.append("metrics"))
    with pytest.raises(Fenced):
        reporter.move_to(JobState.COMPLETED, "the model is saved")
    assert uploads == []
    assert job_store.get_status(job_id)[0].state is JobState.RUNNING
