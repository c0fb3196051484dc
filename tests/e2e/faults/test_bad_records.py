"""One bad record stops nothing: jobs whose records do not parse, or whose launcher's
calls raise, are failed with a message naming the cause, while a job created after them
trains to COMPLETED.

Real parts: the SeaweedFS store, real trainer processes; the first test runs the real
API server (`python -m service.server.main`); the others run the reconciler in this process,
over the real store and the real local launcher, to put a fault into one launcher call
or one store write (what a Kubernetes or Ray API answering 500, or a store denying one
object, does to the loop).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobSpec,
    JobState,
    JobStatus,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore, S3Location, StorageError
from jobstore.store import JobStore
from service.control.launch.base import Observed, Started
from service.control.launch.local import LocalLauncher
from service.control.reconcile_faults import FaultTracker
from service.control.reconciler import Reconciler
from service.errors import CorruptDocument
from service.observability.metrics import Metrics
from service.server.embedded_s3 import EmbeddedS3
from tests.e2e.faults.replicas import new_state_bucket, serving
from tests.prometheus_text import samples
from tests.servers import ApiServer, demo_job, process_alive


def _spec(name: str, epochs: int = 1) -> JobSpec:
    body = demo_job(name, epochCount=epochs)
    return JobSpec(
        jobId=new_job_id(),
        jobName=name,
        createdAt=utc_now(),
        baseModelIdentifier=body["baseModelIdentifier"],
        trainingDataConfig=DataLocation(**body["trainingDataConfig"]),
        outputDataConfig=DataLocation(**body["outputDataConfig"]),
        hyperParameters=HyperParameters(**body["hyperParameters"]),
    )


def _status_when(store: JobStore, job_id: str, state: JobState, timeout: float) -> JobStatus:
    """The job's status once it reads `state` (an unreadable status counts as not yet)."""
    deadline = time.monotonic() + timeout
    status: JobStatus | None = None
    while time.monotonic() < deadline:
        try:
            status, _ = store.get_status(job_id)
        except CorruptDocument:
            status = None
        if status is not None and status.state == state:
            return status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not {state} after {timeout} s: {status}")


@pytest.mark.timeout(400)
def test_jobs_with_unreadable_records_fail_and_a_later_job_completes(
    s3_server: EmbeddedS3, object_store: ObjectStore, demo_assets: None, tmp_path: Path
) -> None:
    bucket = new_state_bucket()
    object_store.ensure_bucket(bucket)
    store = JobStore(object_store, bucket)
    # Jobs whose records are damaged before any server reads them: a status and a spec
    # that are not JSON (failed in the end), and a spec that is JSON of another shape
    # (perhaps a newer release's: never destroyed, set aside and reported).
    bad_status = _spec("bad-status")
    store.create(bad_status)
    garbage = b'{"state": "RUNNING", "updatedAt": '  # cut off half-way
    object_store.put_bytes(S3Location(bucket, f"jobs/{bad_status.jobId}/status.json"), garbage)
    bad_spec = _spec("bad-spec")
    store.create(bad_spec)
    object_store.put_bytes(S3Location(bucket, f"jobs/{bad_spec.jobId}/spec.json"), b"\x00\x17")
    skewed = _spec("skewed-spec")
    store.create(skewed)
    other_shape = skewed.model_dump(mode="json") | {"hyperParameters": {"epochCount": "many"}}
    object_store.put_json(S3Location(bucket, f"jobs/{skewed.jobId}/spec.json"), other_shape)
    skewed_status = object_store.get_bytes(S3Location(bucket, f"jobs/{skewed.jobId}/status.json"))

    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=bucket,
        extra_env={
            # Given up on after 60 s of failing passes: the good job below is created,
            # launched and (mostly) trained while the damaged ones fail every pass.
            "TUNEFORGE_RECONCILE_GIVE_UP_FAILURES": "3",
            "TUNEFORGE_RECONCILE_GIVE_UP_SECONDS": "60",
        },
    )
    with serving(server), server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("good", epochCount=1))
        assert created.status_code == 201, created.text
        good = created.json()["jobId"]
        server.wait_for(good, {"VALIDATING", "RUNNING", "COMPLETED"}, timeout=60)
        for damaged in (bad_status, bad_spec):  # still failing every pass, not given up
            with pytest.raises(CorruptDocument):
                JobStore(object_store, bucket).get(damaged.jobId)  # nothing cached
        assert server.wait_for(good, {"COMPLETED"}, timeout=180)["state"] == "COMPLETED"

        failed = _status_when(store, bad_status.jobId, JobState.FAILED, timeout=120)
        assert failed.failure is not None
        assert failed.failure.reason == FailureReason.INTERNAL
        message = failed.failure.message
        assert f"s3://{bucket}/jobs/{bad_status.jobId}/status.json could not be read" in message
        assert "not JSON" in message and "reconcile passes in a row" in message
        kept = message.rsplit("kept at ", 1)[1]
        assert kept.startswith(f"s3://{bucket}/jobs/{bad_status.jobId}/status.corrupt-")
        kept_object = object_store.get_bytes(S3Location(bucket, kept[len(f"s3://{bucket}/") :]))
        assert kept_object is not None and kept_object[0] == garbage  # nothing lost
        described = client.get(f"/v1/jobs/{bad_status.jobId}").json()
        assert described["state"] == "FAILED"
        assert described["failure"]["message"] == message

        failed = _status_when(store, bad_spec.jobId, JobState.FAILED, timeout=60)
        assert failed.failure is not None
        assert failed.failure.reason == FailureReason.INTERNAL
        spec_uri = f"s3://{bucket}/jobs/{bad_spec.jobId}/spec.json"
        assert f"{spec_uri} could not be read: not JSON" in failed.failure.message
        events = [event.message for event in store.list_events(bad_spec.jobId)]
        assert failed.failure.message in events

        # Both are retired from the loop; the one of another shape stays, untouched,
        # set aside and reported. A listing shows every job that can be read.
        deadline = time.monotonic() + 30
        while set(store.list_active_job_ids()) & {bad_status.jobId, bad_spec.jobId}:
            assert time.monotonic() < deadline, store.list_active_job_ids()
            time.sleep(0.25)
        assert skewed.jobId in store.list_active_job_ids()
        assert (
            object_store.get_bytes(S3Location(bucket, f"jobs/{skewed.jobId}/status.json"))
            == skewed_status
        )
        listing = client.get("/v1/jobs")
        assert listing.status_code == 200, listing.text
        listed = {job["jobId"] for job in listing.json()["jobs"]}
        assert listed == {good, bad_status.jobId}
        metrics = client.get("/metrics").text
    (corrupt,) = samples(metrics, "tuneforge_reconcile_errors_total", reason="corrupt_document")
    assert corrupt >= 6  # at least 3 passes of each
    (other_shape_errors,) = samples(
        metrics, "tuneforge_reconcile_errors_total", reason="invalid_document"
    )
    assert other_shape_errors >= 3
    assert samples(metrics, "tuneforge_reconcile_jobs_set_aside") == [1.0]


# -- in this process: a launcher call that raises, a status that cannot be written ----


class LauncherWhoseObserveFails(LocalLauncher):
    """The real local launcher, except that asking about the trainers of chosen jobs
    raises, as a cluster API answering HTTP 500 for them would. Stopping them works."""

    def __init__(self, work_root: Path, failing_jobs: set[str]) -> None:
        super().__init__(work_root)
        self.failing_jobs = failing_jobs
        self.failing_pids: set[int] = set()

    def start(
        self, spec: JobSpec, attempt: int, environment: dict[str, str], *rest: Any
    ) -> Started:
        started = super().start(spec, attempt, environment, *rest)
        if spec.jobId in self.failing_jobs and started.pid is not None:
            self.failing_pids.add(started.pid)
        return started

    def observe(self, launch: LaunchRecord) -> Observed:
        if launch.pid in self.failing_pids:
            raise RuntimeError("(500) Internal Server Error: etcdserver: request timed out")
        return super().observe(launch)


class StoreDenyingStatusWrites(JobStore):
    """The real job store, except that writing the status of chosen jobs is refused, as
    a store whose policy denies that object would."""

    def __init__(self, storage: ObjectStore, bucket: str, denied: set[str]) -> None:
        super().__init__(storage, bucket)
        self.denied = denied

    def update_status(self, job_id: str, *arguments: Any, **keywords: Any) -> Any:
        if job_id in self.denied:
            raise StorageError(f"AccessDenied writing s3://{self.bucket}/jobs/{job_id}/status.json")
        return super().update_status(job_id, *arguments, **keywords)


@pytest.fixture
def in_process(
    object_store: ObjectStore, demo_assets: None, s3_environment: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, Any]]:
    bucket = new_state_bucket()
    object_store.ensure_bucket(bucket)
    parts: dict[str, Any] = {
        "bucket": bucket,
        "environment": s3_environment
        | {"TUNEFORGE_STATE_BUCKET": bucket, "TUNEFORGE_HEARTBEAT_SECONDS": "1"},
        "work": tmp_path / "work",
    }
    yield parts
    reconciler: Reconciler | None = parts.get("reconciler")
    if reconciler is not None:
        reconciler.stop()
        reconciler.launcher.shutdown(grace_seconds=5)


@pytest.mark.timeout(300)
def test_a_launcher_that_raises_fails_its_job_and_the_others_complete(
    object_store: ObjectStore, in_process: dict[str, Any]
) -> None:
    store = JobStore(object_store, in_process["bucket"])
    broken, later = _spec("observe-fails", epochs=100), _spec("later")  # it trains on
    launcher = LauncherWhoseObserveFails(in_process["work"], {broken.jobId})
    metrics = Metrics()
    reconciler = Reconciler(
        store,
        launcher,
        in_process["environment"],
        interval_seconds=0.3,
        slots=2,
        metrics=metrics,
        faults=FaultTracker(give_up_after_failures=5, give_up_after_seconds=20),
    )
    in_process["reconciler"] = reconciler
    store.create(broken)
    reconciler.start()
    deadline = time.monotonic() + 60
    while reconciler.faults.fault(broken.jobId) is None:  # its observe fails every pass
        assert time.monotonic() < deadline, "the broken job's launcher call never failed"
        time.sleep(0.1)
    store.create(later)  # created while no pass can observe the broken one
    reconciler.kick()
    while store.get_status(later.jobId)[0].launch is None:
        assert time.monotonic() < deadline, "the later job was not launched"
        time.sleep(0.1)
    assert store.get_status(broken.jobId)[0].state != JobState.FAILED  # not given up yet
    failed = _status_when(store, broken.jobId, JobState.FAILED, timeout=60)

    assert failed.failure is not None and failed.failure.reason == FailureReason.INTERNAL
    assert "reconcile passes in a row" in failed.failure.message
    assert (
        "the local launcher's observe failed: RuntimeError: (500) Internal Server Error"
        in failed.failure.message
    )
    (pid,) = launcher.failing_pids
    deadline = time.monotonic() + 10  # given up on: its trainer is killed, not left training
    while process_alive(pid):
        assert time.monotonic() < deadline, f"the trainer {pid} of a failed job still runs"
        time.sleep(0.1)
    assert _status_when(store, later.jobId, JobState.COMPLETED, timeout=180)
    text = metrics.exposition()[0].decode()
    (launcher_errors,) = samples(text, "tuneforge_reconcile_errors_total", reason="launcher")
    assert launcher_errors >= 5


@pytest.mark.timeout(300)
def test_a_job_whose_status_cannot_be_written_is_set_aside_and_tried_again_later(
    object_store: ObjectStore, in_process: dict[str, Any]
) -> None:
    denied, other = _spec("denied"), _spec("other")
    store = StoreDenyingStatusWrites(object_store, in_process["bucket"], {denied.jobId})
    metrics = Metrics()
    reconciler = Reconciler(
        store,
        LocalLauncher(in_process["work"]),
        in_process["environment"],
        interval_seconds=0.3,
        slots=1,  # one trainer at a time: the denied job, first in line, gives its slot back
        metrics=metrics,
        faults=FaultTracker(give_up_after_failures=3, give_up_after_seconds=0, set_aside_seconds=4),
    )
    in_process["reconciler"] = reconciler
    store.create(denied)
    store.create(other)
    reconciler.start()

    def set_aside() -> float:
        gauge = samples(metrics.exposition()[0].decode(), "tuneforge_reconcile_jobs_set_aside")
        return float(gauge[0]) if gauge else 0.0

    deadline = time.monotonic() + 30
    while set_aside() != 1.0:
        assert time.monotonic() < deadline, "the job that cannot be written was not set aside"
        time.sleep(0.2)
    assert reconciler.faults.set_aside_jobs() == [denied.jobId]
    # The job behind it in line launches and completes meanwhile.
    assert _status_when(store, other.jobId, JobState.COMPLETED, timeout=180)
    # Repaired: the next try (every 4 s) launches it, and it trains like any other job.
    store.denied.clear()
    assert _status_when(store, denied.jobId, JobState.COMPLETED, timeout=180)
    assert reconciler.faults.set_aside_jobs() == []
    text = metrics.exposition()[0].decode()
    (store_errors,) = samples(text, "tuneforge_reconcile_errors_total", reason="store")
    assert store_errors >= 3
