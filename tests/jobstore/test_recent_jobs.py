"""Jobs not finished served from memory (jobstore/recent_jobs.py) against a real SeaweedFS:
no store read while the answer is young enough, a change by another process seen once it
is older than the reader accepts, this process's own writes seen at once."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobControl,
    JobSpec,
    JobState,
    JobStatus,
    new_job_id,
    utc_now,
)
from jobstore.recent_jobs import RecentJobs
from jobstore.storage import ObjectStore
from jobstore.store import Job, JobStore
from service.server.embedded_s3 import EmbeddedS3


def _spec() -> JobSpec:
    return JobSpec(
        jobId=new_job_id(),
        jobName="recent",
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )


@pytest.fixture
def bucket(object_store: ObjectStore) -> str:
    name = f"recent-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(name)
    return name


def _counted_store(s3_server: EmbeddedS3, bucket: str) -> tuple[JobStore, Counter[str]]:
    """A job store of its own (its own memory, as another process would have), whose
    store calls are counted by operation."""
    storage = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    calls: Counter[str] = Counter()
    storage.add_call_observer(lambda operation, seconds, error: calls.update([operation]))
    return JobStore(storage, bucket), calls


def _running(status: JobStatus) -> JobStatus:
    return status.model_copy(update={"state": JobState.RUNNING})


def test_a_reader_that_accepts_an_older_answer_reads_the_store_once(
    s3_server: EmbeddedS3, bucket: str
) -> None:
    store, calls = _counted_store(s3_server, bucket)
    spec = _spec()
    store.create(spec)
    calls.clear()
    first = store.get(spec.jobId, max_age=60)
    reads = calls["GetObject"]
    assert reads >= 1  # status (and control); the spec was cached by the create
    first.status.queuePosition = 7  # what get_job does to the copy it returns
    for _ in range(20):
        again = store.get(spec.jobId, max_age=60)
        assert again.status.state == JobState.QUEUED
        assert again.status.queuePosition is None  # each reader its own copy
    assert calls["GetObject"] == reads, calls
    # A reader that accepts nothing old reads the store every time.
    store.get(spec.jobId)
    assert calls["GetObject"] > reads


def test_another_processes_change_shows_once_the_answer_is_older_than_max_age(
    s3_server: EmbeddedS3, bucket: str
) -> None:
    replica, _ = _counted_store(s3_server, bucket)
    trainer, _ = _counted_store(s3_server, bucket)  # another process: its own memory
    spec = _spec()
    replica.create(spec)
    assert replica.get(spec.jobId, max_age=60).status.state == JobState.QUEUED
    trainer.update_status(spec.jobId, _running)
    # Within what the reader accepts, the answer it had (the documented staleness).
    assert replica.get(spec.jobId, max_age=60).status.state == JobState.QUEUED
    time.sleep(0.3)
    # Older than the reader accepts: read again, and the change is there.
    assert replica.get(spec.jobId, max_age=0.2).status.state == JobState.RUNNING
    # And that read is what the next young-enough reader gets.
    assert replica.get(spec.jobId, max_age=60).status.state == JobState.RUNNING


def test_this_processes_own_writes_show_at_once(s3_server: EmbeddedS3, bucket: str) -> None:
    store, calls = _counted_store(s3_server, bucket)
    spec = _spec()
    store.create(spec)
    assert not store.get(spec.jobId, max_age=60).control.stopRequested

    store.update_control(
        spec.jobId, lambda control: control.model_copy(update={"stopRequested": True})
    )
    assert store.get(spec.jobId, max_age=60).control.stopRequested

    store.update_status(spec.jobId, _running)
    seen = store.get(spec.jobId, max_age=60)
    assert seen.status.state == JobState.RUNNING and seen.control.stopRequested
    # Then served from memory again until it is older than the reader accepts.
    calls.clear()
    store.get(spec.jobId, max_age=60)
    assert calls["GetObject"] == 0, calls


def test_a_listing_remembers_jobs_as_of_its_stop_marker_listing(
    s3_server: EmbeddedS3, bucket: str
) -> None:
    """get_many without a control read: the job is known only as of when the markers
    were listed, so an old listing's read is not served as young."""
    store, calls = _counted_store(s3_server, bucket)
    spec = _spec()
    store.create(spec)
    listed_long_ago = time.monotonic() - 30
    store.get_many([spec.jobId], stopped=set(), markers_listed_at=listed_long_ago)
    calls.clear()
    store.get_many([spec.jobId], stopped=set(), max_age=10)
    assert calls["GetObject"] >= 1, calls  # 30 s old: read again
    store.get_many([spec.jobId], stopped=set(), max_age=10, markers_listed_at=time.monotonic())
    calls.clear()
    store.get_many([spec.jobId], stopped=set(), max_age=10)
    assert calls["GetObject"] == 0, calls  # known since just now: from memory


def test_a_read_begun_before_this_processes_write_is_not_kept() -> None:
    """A read in flight while this process writes returns what the store held before the
    write; kept, it would hide the write from the next reader."""
    recent = RecentJobs()
    spec = _spec()
    before = Job(spec, JobStatus(updatedAt=utc_now()), JobControl())
    read_began = time.monotonic()
    recent.written(spec.jobId)  # the write ends while the read is in flight
    recent.remember(before, read_began)
    assert recent.fresh(spec.jobId, max_age=60) is None
    after = Job(spec, _running(JobStatus(updatedAt=utc_now())), JobControl())
    recent.remember(after, time.monotonic())
    found = recent.fresh(spec.jobId, max_age=60)
    assert found is not None and found.status.state == JobState.RUNNING
    # An older read arriving late does not replace a newer one.
    recent.remember(before, read_began)
    found = recent.fresh(spec.jobId, max_age=60)
    assert found is not None and found.status.state == JobState.RUNNING


def test_finished_jobs_stay_apart(s3_server: EmbeddedS3, bucket: str) -> None:
    store, calls = _counted_store(s3_server, bucket)
    spec = _spec()
    store.create(spec)
    store.update_status(
        spec.jobId, lambda status: status.model_copy(update={"state": JobState.STOPPED})
    )
    assert store.get(spec.jobId).status.state == JobState.STOPPED
    calls.clear()
    assert store.get(spec.jobId).status.state == JobState.STOPPED  # no max_age needed
    assert calls["GetObject"] == 0, calls
    assert store.recent.fresh(spec.jobId, max_age=60) is None
