"""Warm trainers (service/control/launch/warm_pool.py, trainer/warm_start.py): a job is
handed to a spare process that has already imported torch and transformers.

The spare is real (`python -m trainer.warm_start`): it takes exactly the job's directory,
environment, limits, output and GPU locks, runs it, and ends; the pool starts another in
its place; spares end with their server. Through a real API server, a job runs in the
spare that was waiting, or in a new one when that spare has died.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.control.launch.warm_pool import WarmTrainerPool
from tests.servers import ApiServer, demo_job, process_alive
from tests.trainer.jobs import wait_for

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(autouse=True)
def warm_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WARM_TRAINERS", "1")  # the API servers here keep a spare


def pool(tmp_path: Path, pythonpath: str = str(ROOT)) -> WarmTrainerPool:
    minimal = {"PATH": os.environ["PATH"], "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}
    return WarmTrainerPool(sys.executable, tmp_path / "spares", 1, minimal)


def job_message(directory: Path, environment: dict[str, str], **limits: int) -> dict[str, Any]:
    directory.mkdir(parents=True)
    release = directory / "release"
    return {
        "arguments": [
            "-m",
            "tests.service.control.launch.report_process",
            "--hold-until",
            str(release),
        ],
        "directory": str(directory),
        "log_file": str(directory / "trainer.log"),
        "environment": environment,
        "limits": [limits.get("address_space", 0), 0, limits.get("open_files", 0)],
        "cgroup_procs": None,
    }


def reported(directory: Path) -> dict[str, Any] | None:
    log = directory / "trainer.log"
    lines = log.read_text().splitlines() if log.exists() else []
    found: dict[str, Any] | None = json.loads(lines[-1]) if lines else None
    return found


def locked_by_another(path: Path) -> bool:
    """Whether some other open file holds the flock on `path`."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def test_a_spare_takes_only_its_jobs_directory_environment_limits_and_locks(
    tmp_path: Path,
) -> None:
    spares = pool(tmp_path)
    spares.fill()
    try:
        spare = spares.take()
        assert spare is not None
        spare_log = spare.log
        environment = {"PYTHONPATH": str(ROOT), "JOB_SECRET": "for-this-job-only"}
        directory = tmp_path / "work" / "job-1" / "attempt-1"
        # A GPU's lock, as the launcher's device lease holds it (service/control/launch/gpus.py).
        lock = tmp_path / "gpu-0.lock"
        lock.touch()
        descriptor = os.open(lock, os.O_RDONLY)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        address_space = 64 << 30
        try:
            spare.hand(
                job_message(directory, environment, address_space=address_space, open_files=123),
                [descriptor],
            )
        finally:
            os.close(descriptor)  # the caller's copy: the spare's keeps the lock
        report = wait_for(lambda: reported(directory), timeout=120, what="the spare's report")
        assert locked_by_another(lock)  # held by the job's process alone now
        (directory / "release").touch()
        assert spare.process.wait(timeout=60) == 7
        assert not locked_by_another(lock)  # and released when it ends

        assert report["cwd"] == str(directory)
        # Exactly the job's environment: none of the spare's own (HOME, PATH, HF_HOME).
        assert report["environment"] == environment
        assert report["open_files"] == 123
        assert report["address_space"] == address_space
        assert str(lock) in report["files"]
        # Nothing of the launcher's or the spare's left open: not its socket, not its log.
        assert not [name for name in report["files"] if name.startswith("socket:")]
        assert str(spare_log) not in report["files"]
        assert report["session_leader"]  # its own process group: a stop signals it all
        assert not spare_log.exists()  # its output is the job's log now
        # Taken spares are replaced: one waits for the next job, a new process.
        (waiting,) = spares.waiting()
        assert waiting.process.pid != spare.process.pid and waiting.process.poll() is None
    finally:
        spares.close()
    assert waiting.process.poll() is not None  # closed: a spare without a job ends


def test_a_spare_whose_imports_failed_says_why_in_the_jobs_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "peft.py").write_text("raise ImportError('peft is broken on this host')\n")
    spares = pool(tmp_path, pythonpath=f"{broken}:{ROOT}")
    spares.fill()
    try:
        spare = spares.take()
        assert spare is not None
        directory = tmp_path / "work" / "job-2" / "attempt-1"
        spare.hand(job_message(directory, {"PYTHONPATH": str(ROOT)}), [])
        # A crash, as a cold trainer whose import failed: the reconciler retries it.
        assert spare.process.wait(timeout=120) == 1
        assert "peft is broken on this host" in (directory / "trainer.log").read_text()
    finally:
        spares.close()


def spares_of(server: ApiServer) -> list[int]:
    """The live warm trainers the server started (its children running warm_start)."""
    assert server.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        if (
            int(parent.split()[1]) == server.process.pid
            and b"trainer.warm_start" in command
            and process_alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


def launched_pid(server: ApiServer, object_store: ObjectStore, job_id: str) -> int:
    status, _ = JobStore(object_store, server.state_bucket).get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None
    return status.launch.pid


def started_warm(server: ApiServer, job_id: str, pid: int) -> bool:
    """Whether the server's log says it handed the job's first attempt to a spare."""
    said = f"started trainer for job {job_id} attempt 1, pid {pid} (a warm spare)"
    return said in server.log_path.read_text()


def test_a_job_runs_in_the_waiting_spare_and_another_takes_its_place(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    (spare,) = wait_for(lambda: spares_of(api_server), timeout=60, what="a spare")
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("warm", epochCount=1))
    assert created.status_code == 201, created.text
    job_id = created.json()["jobId"]
    api_server.wait_for(job_id, {"COMPLETED"}, timeout=300)
    assert launched_pid(api_server, object_store, job_id) == spare
    assert started_warm(api_server, job_id, spare)
    log = (api_server.home / "work" / job_id / "attempt-1" / "trainer.log").read_text()
    assert f"job {job_id}: RUNNING -> COMPLETED" in log
    (next_spare,) = wait_for(
        lambda: [pid for pid in spares_of(api_server) if pid != spare],
        timeout=60,
        what="a new spare",
    )
    assert next_spare != spare


def test_a_job_whose_spare_died_runs_in_a_new_one_and_spares_end_with_the_server(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    (spare,) = wait_for(lambda: spares_of(api_server), timeout=60, what="a spare")
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: spare not in spares_of(api_server), timeout=30, what="the spare gone")
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("after-a-dead-spare", epochCount=1))
    assert created.status_code == 201, created.text
    job_id = created.json()["jobId"]
    api_server.wait_for(job_id, {"COMPLETED"}, timeout=300)
    # The dead spare was dropped and the job went to the one started in its place.
    launched = launched_pid(api_server, object_store, job_id)
    assert launched != spare and started_warm(api_server, job_id, launched)

    # A server killed outright: its spares see their socket close and end.
    left = wait_for(lambda: spares_of(api_server), timeout=60, what="a spare")
    api_server.kill()
    wait_for(lambda: not any(process_alive(pid) for pid in left), timeout=60, what="spares to end")


def test_logs_of_spares_whose_server_is_gone_are_removed_when_a_pool_starts(
    tmp_path: Path,
) -> None:
    """A server killed outright leaves its spares' logs (the spares end, nothing removes
    them); the next pool in the folder removes those, and keeps the logs of a server that
    lives (API workers share the folder)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    root = tmp_path / "spares"
    root.mkdir()
    stale = root / f"spare-{gone.pid}-0123456789ab.log"
    live = root / f"spare-{os.getppid()}-0123456789ab.log"
    for path in (stale, live):
        path.write_text("imported\n")
    spares = pool(tmp_path)
    spares.size = 0  # start no spare: only the clean-up is under test
    spares.fill()
    assert not stale.exists()
    assert live.exists()


def test_a_spares_log_is_named_after_its_server(tmp_path: Path) -> None:
    spares = pool(tmp_path)
    try:
        spares.fill()
        (spare,) = spares.waiting()
        assert spare.log.name.startswith(f"spare-{os.getpid()}-"), spare.log
    finally:
        spares.close()
