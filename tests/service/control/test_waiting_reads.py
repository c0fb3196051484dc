"""A reconcile pass reads what changed, not every waiting job (service/control/reconciler.py),
on a real store: a waiting job nothing touched is not read again; a launch by another
replica, a stop and a write behind the service's back are each seen.

The trainers are `sleep` processes (tests/service/control/test_gpu_queue.py's launcher):
the queue policy is under test here, not training.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobSpec,
    JobState,
    JobStatus,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore, S3Location
from jobstore.store import JobStore
from service.control.reconciler import Reconciler
from service.core import jobs
from service.server.embedded_s3 import EmbeddedS3
from tests.service.control.test_gpu_queue import SleepingTrainers


def _create(store: JobStore, count: int) -> list[str]:
    """`count` queued jobs of tenant "waits", oldest first."""
    now = int(time.time() * 1000)
    ids = []
    for number in range(count):
        spec = JobSpec(
            jobId=new_job_id(now + number),
            jobName=f"job-{number}",
            tenant="waits",
            createdAt=utc_now(),
            baseModelIdentifier="s3://demo/models/tiny-llama/",
            trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
            outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
            hyperParameters=HyperParameters(),
        )
        store.create(spec)
        ids.append(spec.jobId)
    return ids


def _replica(store: JobStore, trainers: SleepingTrainers, slots: int) -> Reconciler:
    """Another replica's reconciler: a store of its own (nothing cached), the same bucket."""
    return Reconciler(JobStore(store.storage, store.bucket), trainers, {}, slots=slots)


def _in_line(store: JobStore, job_ids: list[str]) -> list[int | None]:
    store.queue_order.cache_seconds = 0
    return [store.queue_order.position(job_id) for job_id in job_ids]


def test_a_pass_reads_no_waiting_job_that_nothing_changed(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    store, calls = counted
    waiting = _create(store, 30)
    reconciler = Reconciler(store, SleepingTrainers(), {}, slots=0)  # nothing starts

    reconciler.run_once()
    assert reconciler.last_pass_reads == 30
    calls.clear()
    reconciler.run_once()
    assert (reconciler.last_pass_reads, reconciler.last_pass_known_waiting) == (0, 30)
    # Four listings (active jobs, control markers, changed markers, queue ledgers) and
    # nothing read or written: the same with 30 waiting jobs as with 3.
    assert calls["GetObject"] == 0, calls
    assert calls["ListObjectsV2"] == 4, calls
    assert calls["PutObject"] == 0, calls
    assert _in_line(store, waiting) == list(range(1, 31))


def test_a_launch_by_another_replica_is_read_in_the_next_pass(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    store, _ = counted
    first, second, third = _create(store, 3)
    trainers = SleepingTrainers()  # one host's processes, seen by both replicas
    here = _replica(store, trainers, slots=0)
    there = _replica(store, trainers, slots=1)
    try:
        here.run_once()
        assert here.last_pass_known_waiting == 0 and here.last_pass_reads == 3
        there.run_once()  # launches the oldest
        assert first in trainers.processes
        launched = store.get_status(first)[0].launch
        assert launched is not None and launched.launchedBy == there.replica_id

        here.run_once()
        # The launched job only, learned from its changed marker; the other two not.
        assert (here.last_pass_reads, here.last_pass_known_waiting) == (1, 2)
        # It holds the one slot now: with room for one, this replica starts nothing.
        here.slots = 1
        here.run_once()
        assert set(trainers.processes) == {first}
        assert _in_line(store, [first, second, third]) == [None, 1, 2]
    finally:
        trainers.shutdown(0)


def test_a_stop_of_a_waiting_job_is_seen_in_the_next_pass(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    store, _ = counted
    waiting = _create(store, 4)
    reconciler = Reconciler(store, SleepingTrainers(), {}, slots=0)
    reconciler.run_once()

    jobs.stop_job(store, waiting[1], tenant="waits")  # through another replica's store
    reconciler.run_once()
    assert reconciler.last_pass_reads == 1
    assert store.get(waiting[1]).status.state == JobState.STOPPED
    assert _in_line(store, waiting) == [1, None, 2, 3]


def test_a_change_behind_the_services_back_is_read_within_the_refresh(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    """A status written straight to the store (no marker, as no service path does) is
    seen once the job is due to be read again: after 0.5 to 1 times the refresh."""
    store, _ = counted
    waiting = _create(store, 3)
    reconciler = Reconciler(store, SleepingTrainers(), {}, slots=0, waiting_refresh_seconds=4.0)
    reconciler.run_once()
    status, _ = store.get_status(waiting[0])
    failed = status.moved_to(JobState.FAILED)
    store.storage.put_json(
        S3Location(store.bucket, f"jobs/{waiting[0]}/status.json"), failed.model_dump(mode="json")
    )

    reconciler.run_once()
    assert reconciler.last_pass_reads == 0  # not due yet (2 s at the soonest): still waiting
    time.sleep(4.1)
    reconciler.run_once()
    assert reconciler.last_pass_reads == 3  # all due: read, the failed one retired
    assert waiting[0] not in store.list_active_job_ids()
    assert _in_line(store, waiting) == [None, 1, 2]


def test_with_no_refresh_every_waiting_job_is_read_every_pass(
    counted: tuple[JobStore, Counter[str]], tmp_path: Path
) -> None:
    store, _ = counted
    _create(store, 5)
    reconciler = Reconciler(store, SleepingTrainers(), {}, slots=0, waiting_refresh_seconds=0)
    for _ in range(3):
        reconciler.run_once()
        assert (reconciler.last_pass_reads, reconciler.last_pass_known_waiting) == (5, 0)


def test_only_changes_to_a_waiting_job_write_its_changed_marker(
    counted: tuple[JobStore, Counter[str]],
) -> None:
    store, _ = counted
    job_id = _create(store, 1)[0]
    assert store.changed_markers() == {}

    def heartbeat_of(status: JobStatus) -> JobStatus:
        beat = status.model_copy(deep=True)
        beat.heartbeatAt = utc_now()
        return beat

    # Leaving the queue writes a new version first ...
    assert store.update_status(job_id, lambda status: status.moved_to(JobState.VALIDATING))
    after_leaving = store.changed_markers()
    assert set(after_leaving) == {job_id}
    # ... and writes to a job that no longer waits leave it as it is.
    assert store.update_status(job_id, heartbeat_of)
    assert store.changed_markers() == after_leaving
    # Retired, the marker goes with the active one.
    store.mark_inactive(job_id)
    assert store.changed_markers() == {}


class RecordingStore(ObjectStore):
    """The real store, with the keys written, in order."""

    written: list[str]

    def put_bytes(self, location: S3Location, data: bytes, **options: Any) -> Any:
        self.written.append(location.key)  # put_json writes through here too
        return super().put_bytes(location, data, **options)


def test_the_changed_marker_is_written_after_the_status(
    counted: tuple[JobStore, Counter[str]], s3_server: EmbeddedS3
) -> None:
    """After, never before: a replica that lists the new marker and then reads the job
    must find the new status (a marker written first could be listed with the old one,
    and the change then go unseen until the refresh)."""
    store, _ = counted
    recording = RecordingStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        region="us-east-1",
    )
    recording.written = []
    writer = JobStore(recording, store.bucket)
    job_id = _create(store, 1)[0]
    assert writer.update_status(job_id, lambda status: status.moved_to(JobState.VALIDATING))
    assert recording.written == [f"jobs/{job_id}/status.json", f"changed/{job_id}"]
