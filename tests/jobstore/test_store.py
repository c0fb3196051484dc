"""The job store on a real SeaweedFS: create-once, compare-and-swap, ordering."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobControl,
    JobSpec,
    JobState,
    JobStatus,
    job_id_created_ms,
    new_job_id,
    transition,
    utc_now,
)
from jobstore.errors import IllegalTransition, JobNotFound
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3


@pytest.fixture
def store(object_store: ObjectStore) -> JobStore:
    bucket = f"store-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    return JobStore(object_store, bucket)


def _spec(job_id: str | None = None) -> JobSpec:
    return JobSpec(
        jobId=job_id or new_job_id(),
        jobName="t",
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
    )


def test_job_ids_list_newest_first() -> None:
    ids = [new_job_id(now_ms=1_700_000_000_000 + step) for step in range(50)]
    assert sorted(ids) == list(reversed(ids))
    assert job_id_created_ms(ids[7]) == 1_700_000_000_007


def test_listing_is_newest_first(store: JobStore) -> None:
    created = []
    for step in range(5):
        spec = _spec(new_job_id(now_ms=1_800_000_000_000 + step))
        store.create(spec)
        created.append(spec.jobId)
    assert store.list_job_ids(after=None, limit=10) == list(reversed(created))
    assert store.list_job_ids(after=created[3], limit=10) == list(reversed(created[:3]))


def test_spec_is_written_once(store: JobStore) -> None:
    spec = _spec()
    store.create(spec)
    again = spec.model_copy(update={"jobName": "other"})
    store.create(again)
    assert store.get_spec(spec.jobId).jobName == "t"


def test_compare_and_swap_loses_no_update(store: JobStore) -> None:
    spec = _spec()
    store.create(spec)

    def add_one(status: JobStatus) -> JobStatus:
        changed = status.model_copy(deep=True)
        changed.progress.step += 1
        return changed

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: store.update_status(spec.jobId, add_one), range(40)))
    status, _ = store.get_status(spec.jobId)
    assert status.progress.step == 40


def test_events_keep_order_under_concurrency(store: JobStore) -> None:
    spec = _spec()
    store.create(spec)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda n: store.append_event(spec.jobId, "T", f"e{n}"), range(12)))
    events = store.list_events(spec.jobId)
    assert [e.sequence for e in events] == list(range(12))
    assert sorted(e.message for e in events) == sorted(f"e{n}" for n in range(12))


def test_unknown_and_malformed_ids_are_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get(new_job_id())
    with pytest.raises(JobNotFound):
        store.get("../../etc/passwd")


def test_transitions() -> None:
    assert transition(JobState.QUEUED, JobState.VALIDATING) == JobState.VALIDATING
    assert transition(JobState.RUNNING, JobState.STOPPING) == JobState.STOPPING
    for terminal in (JobState.COMPLETED, JobState.FAILED, JobState.STOPPED):
        assert terminal.is_terminal()
        with pytest.raises(IllegalTransition):
            transition(terminal, JobState.RUNNING)
    with pytest.raises(IllegalTransition):
        transition(JobState.QUEUED, JobState.COMPLETED)
    with pytest.raises(IllegalTransition):
        transition(JobState.RUNNING, JobState.STOPPED)


def test_a_pause_is_not_an_end() -> None:
    assert not JobState.PAUSED.is_terminal()
    for live in (JobState.QUEUED, JobState.VALIDATING, JobState.RUNNING):
        assert transition(live, JobState.PAUSED) == JobState.PAUSED
    for after in (JobState.QUEUED, JobState.STOPPED, JobState.FAILED):
        assert transition(JobState.PAUSED, after) == after
    for never in (JobState.RUNNING, JobState.COMPLETED, JobState.STOPPING):
        with pytest.raises(IllegalTransition):
            transition(JobState.PAUSED, never)
    with pytest.raises(IllegalTransition):
        transition(JobState.STOPPING, JobState.PAUSED)  # a stop outranks a pause


def test_a_stop_and_a_pause_requested_together_both_land(store: JobStore) -> None:
    """Control changes are compare-and-swaps: two requests racing never lose one, and
    each leaves the marker that tells readers the job has a control document."""
    import threading

    spec = _spec()
    store.create(spec)
    assert spec.jobId not in store.control_marked(spec.jobId, spec.jobId)
    requests = [
        ("stopRequested", "stopRequestedAt"),
        ("pauseRequested", "pauseRequestedAt"),
    ]

    def ask(flag: str, when: str) -> None:
        store.update_control(
            spec.jobId,
            lambda control: control.model_copy(update={flag: True, when: "2026-01-01T00:00:00Z"}),
        )

    for _ in range(5):
        threads = [threading.Thread(target=ask, args=request) for request in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        control = store.get_control(spec.jobId)
        assert control.stopRequested and control.pauseRequested
        store.put_control(spec.jobId, JobControl())  # again, from nothing
    assert spec.jobId in store.control_marked(spec.jobId, spec.jobId)


def test_status_keeps_fields_a_newer_writer_added(
    store: JobStore, object_store: ObjectStore
) -> None:
    from jobstore.storage import S3Location

    spec = _spec()
    store.create(spec)
    location = S3Location(store.bucket, f"jobs/{spec.jobId}/status.json")
    found = object_store.get_json(location)
    assert found is not None
    document, etag = found
    document["fieldFromTheFuture"] = {"x": 1}
    object_store.put_json(location, document, if_match=etag)

    def add_one(status: JobStatus) -> JobStatus:
        changed = status.model_copy(deep=True)
        changed.progress.step += 1
        return changed

    store.update_status(spec.jobId, add_one)
    after = object_store.get_json(location)
    assert after is not None
    assert after[0]["fieldFromTheFuture"] == {"x": 1}
    assert after[0]["progress"]["step"] == 1


class _LostAnswers(ObjectStore):
    """The real store, but the first write of an event lands and its answer is lost: the
    retry that follows (botocore's, or the trainer's outage patience) finds the key taken."""

    lost = False

    def put_bytes(self, location: S3Location, body: bytes, **conditions: Any) -> str:
        etag = super().put_bytes(location, body, **conditions)
        if "/events/" in location.key and not self.lost:
            self.lost = True
            raise PreconditionFailed(location.uri)
        return etag


def test_an_event_whose_answer_was_lost_is_not_written_twice(
    store: JobStore, s3_server: EmbeddedS3
) -> None:
    losing = JobStore(
        _LostAnswers(
            endpoint_url=s3_server.endpoint_url,
            access_key_id=s3_server.access_key_id,
            secret_access_key=s3_server.secret_access_key,
            region="us-east-1",
        ),
        store.bucket,
    )
    spec = _spec()
    store.create(spec)
    store.append_event(spec.jobId, "FIRST", "before")
    losing.append_event(spec.jobId, "T", "once")
    store.append_event(spec.jobId, "LAST", "after")
    assert [(e.sequence, e.type) for e in store.list_events(spec.jobId)] == [
        (0, "FIRST"),
        (1, "T"),
        (2, "LAST"),
    ]
