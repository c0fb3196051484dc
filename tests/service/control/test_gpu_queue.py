"""The reconciler on a real store and a real GPU inventory: jobs take free devices, a
GPU job that does not fit holds the line (no starvation), CPU jobs keep their own slots.

The trainers are `sleep` processes that inherit their devices' locks, as a trainer does
from the local launcher (service/control/launch/local.py): a job ends when its process is killed
(crash retry budget 0: FAILED), and its devices come back because the process is gone.
This is the queue policy under test, not training; launch/test_gpu_jobs.py runs
real trainers.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from jobstore.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobResources,
    JobSpec,
    JobState,
    LaunchRecord,
    new_job_id,
    utc_now,
)
from jobstore.store import JobStore
from service.control.launch.base import Observed, Started
from service.control.launch.gpus import DeviceLease, GpuInventory
from service.control.reconciler import Reconciler


class SleepingTrainers:
    """Each attempt is a `sleep` holding the locks of its devices until it is killed."""

    name = "local"

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}  # each job's latest attempt
        self.started: list[subprocess.Popen[bytes]] = []  # every attempt, ended at shutdown
        self.devices: dict[str, list[str]] = {}

    def start(
        self,
        spec: JobSpec,
        attempt: int,
        environment: dict[str, str],
        devices: DeviceLease | None = None,
    ) -> Started:
        locks = tuple(devices.file_descriptors) if devices is not None else ()
        process = subprocess.Popen(["sleep", "600"], pass_fds=locks)
        self.processes[spec.jobId] = process
        self.started.append(process)
        self.devices[spec.jobId] = list(devices.devices) if devices is not None else []
        return Started(host="test-host", pid=process.pid, process_start_ticks=None)

    def observe(self, launch: LaunchRecord) -> Observed:
        for process in self.processes.values():
            if process.pid == launch.pid:
                code = process.poll()
                return Observed(alive=code is None, exit_code=code)
        return Observed(alive=False)

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        pass

    def local_log(self, job_id: str, attempt: int) -> Path | None:
        return None

    def release(self, job_id: str) -> None:
        return None  # nothing outlives the trainer's process

    def shutdown(self, grace_seconds: float) -> None:
        for process in self.started:
            process.kill()
            process.wait()

    def end(self, job_id: str) -> None:
        self.processes[job_id].kill()
        self.processes[job_id].wait()


def _create(store: JobStore, name: str, gpus: int, created_ms: int) -> str:
    spec = JobSpec(
        jobId=new_job_id(created_ms),
        jobName=name,
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
        resources=JobResources(gpus=gpus),
    )
    store.create(spec)
    return spec.jobId


def test_a_four_gpu_job_is_not_starved_by_one_gpu_jobs_behind_it(
    store: JobStore, tmp_path: Path
) -> None:
    inventory = GpuInventory(["0", "1", "2", "3"], tmp_path / "gpus")
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, crash_retry_budget=0, slots=1, gpus=inventory)
    now = int(time.time() * 1000)
    # In creation order: name -> GPUs asked for.
    asked = {"one-a": 1, "one-b": 1, "one-c": 1, "four": 4, "one-d": 1, "one-e": 1, "cpu": 0}
    ids = {
        name: _create(store, name, gpus, now + i) for i, (name, gpus) in enumerate(asked.items())
    }

    def started() -> set[str]:
        return {name for name, job_id in ids.items() if job_id in trainers.processes}

    def queue_positions() -> dict[str, int | None]:
        return {n: store.queue_order.position(ids[n]) for n in ("four", "one-d", "one-e")}

    try:
        reconciler.run_once()
        # Three 1-GPU jobs fill three devices; the 4-GPU job does not fit and holds the
        # line: the 1-GPU jobs behind it wait although a device is free. The CPU job
        # takes its own slot.
        assert started() == {"one-a", "one-b", "one-c", "cpu"}
        assert [trainers.devices[ids[n]] for n in ("one-a", "one-b", "one-c")] == [
            ["0"],
            ["1"],
            ["2"],
        ]
        assert trainers.devices[ids["cpu"]] == []
        assert inventory.free_devices() == ["3"]
        assert queue_positions() == {"four": 1, "one-d": 2, "one-e": 3}
        launch = store.get_status(ids["one-b"])[0].launch
        assert launch is not None and launch.devices == ["1"]

        trainers.end(ids["one-a"])
        reconciler.run_once()
        assert started() == {"one-a", "one-b", "one-c", "cpu"}, "a 1-GPU job jumped the line"
        assert store.get_status(ids["one-a"])[0].state == JobState.FAILED

        trainers.end(ids["one-b"])
        trainers.end(ids["one-c"])
        reconciler.run_once()
        assert "four" in started() and trainers.devices[ids["four"]] == ["0", "1", "2", "3"]
        assert not {"one-d", "one-e"} & started()
        assert queue_positions() == {"four": None, "one-d": 1, "one-e": 2}

        trainers.end(ids["four"])
        reconciler.run_once()
        assert {"one-d", "one-e"} <= started()
        assert trainers.devices[ids["one-d"]] == ["0"] and trainers.devices[ids["one-e"]] == ["1"]
        events = [e.message for e in store.list_events(ids["one-e"]) if e.type == "LAUNCHED"]
        assert events == ["trainer attempt 1 launched (local) on GPU(s) 1"]
    finally:
        trainers.shutdown(0)


def test_a_relaunched_gpu_job_gets_devices_again(store: JobStore, tmp_path: Path) -> None:
    inventory = GpuInventory(["0", "1"], tmp_path / "gpus")
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, crash_retry_budget=1, gpus=inventory)
    job_id = _create(store, "two", 2, int(time.time() * 1000))
    try:
        reconciler.run_once()
        assert trainers.devices[job_id] == ["0", "1"]
        first = trainers.processes[job_id]
        trainers.end(job_id)  # a crash: relaunched, on both devices again
        reconciler.run_once()
        assert trainers.processes[job_id] is not first
        assert trainers.devices[job_id] == ["0", "1"]
        status = store.get_status(job_id)[0]
        assert status.launch is not None and status.launch.attempt == 2
        assert status.launch.devices == ["0", "1"]
        assert inventory.free_devices() == []
    finally:
        trainers.shutdown(0)


def test_a_job_asking_for_more_gpus_than_the_host_now_has_fails_and_holds_nothing(
    store: JobStore, tmp_path: Path
) -> None:
    """Created when the host had more GPUs (or TUNEFORGE_GPUS was narrowed since)."""
    inventory = GpuInventory(["0", "1"], tmp_path / "gpus")
    trainers = SleepingTrainers()
    reconciler = Reconciler(store, trainers, {}, gpus=inventory)
    now = int(time.time() * 1000)
    too_big = _create(store, "four", 4, now)
    behind = _create(store, "one", 1, now + 1)
    try:
        reconciler.run_once()
        status = store.get_status(too_big)[0]
        assert status.state == JobState.FAILED and status.failure is not None
        assert status.failure.reason == FailureReason.RESOURCES_UNAVAILABLE
        assert "4 GPU(s)" in status.failure.message and "has 2" in status.failure.message
        assert trainers.devices[behind] == ["0"]  # the line was not held
    finally:
        trainers.shutdown(0)


def test_gpu_jobs_wait_while_a_gpu_job_launched_without_a_lease_runs(
    store: JobStore, tmp_path: Path
) -> None:
    """A rolling upgrade: a GPU job started by a replica from before the inventory holds
    devices nobody recorded, so no GPU job starts until it ends; CPU jobs still do."""
    inventory = GpuInventory(["0", "1"], tmp_path / "gpus")
    trainers = SleepingTrainers()
    now = int(time.time() * 1000)
    old = _create(store, "old", 1, now)
    old_replica = Reconciler(store, trainers, {}, slots=4)  # no inventory: no lease
    try:
        old_replica.run_once()
        assert old in trainers.processes
        gpu_job = _create(store, "new-gpu", 1, now + 1)
        cpu_job = _create(store, "new-cpu", 0, now + 2)
        reconciler = Reconciler(store, trainers, {}, slots=4, gpus=inventory, crash_retry_budget=0)
        reconciler.run_once()
        assert gpu_job not in trainers.processes and cpu_job in trainers.processes
        cpu_launch = [e.message for e in store.list_events(cpu_job) if e.type == "LAUNCHED"]
        assert cpu_launch == [
            "trainer attempt 1 launched (local) on the CPU (resources.gpus is 0; this host "
            "has 2 GPU(s), ask for them with resources.gpus)"
        ]
        trainers.end(old)
        reconciler.run_once()  # the old job ends (FAILED: retry budget)...
        reconciler.run_once()  # ...and the GPU job starts
        assert trainers.devices[gpu_job] == ["0"]
    finally:
        trainers.shutdown(0)
