"""A trainer that runs out of memory ends its job FAILED (OUT_OF_MEMORY), saying so: the
peak memory it reached, the data's size, what to do. It is not retried: the same job on
the same data would run out again. A trainer killed -9 by anyone else is still a crash,
retried.

The OOM kill is real: with TUNEFORGE_TRAINER_MEMORY_LIMIT_BYTES the local launcher runs
each trainer in a memory cgroup of its own (service/control/launch/memory.py), and the kernel's
OOM killer ends the trainer when it passes the limit. Where the host lets no process
make a memory cgroup, the end-to-end tests are skipped (they say why); the parsing and
the messages are tested everywhere.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import TrainerExit
from service.control.launch.memory import (
    make_trainer_cgroup,
    memory_cgroup_in,
    memory_failure_details,
    oom_verdict,
)
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job
from trainer.__main__ import classify, is_out_of_memory

pytestmark = pytest.mark.timeout(600)


def cgroups_refused() -> str | None:
    """Why this host lets no memory cgroup be made for a trainer, or None."""
    try:
        probe = make_trainer_cgroup(f"tuneforge-probe-{uuid.uuid4().hex[:8]}", 1 << 30)
    except OSError as error:
        return str(error)
    probe.remove()
    return None


def server_with_limit(s3: EmbeddedS3, home: Path, limit_bytes: int) -> Iterator[ApiServer]:
    refused = cgroups_refused()
    if refused is not None:
        pytest.skip(f"no memory cgroup can be made here: {refused}")
    server = ApiServer(
        s3,
        home,
        state_bucket=f"oom-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_TRAINER_MEMORY_LIMIT_BYTES": str(limit_bytes)},
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


@pytest.fixture
def tight_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    # Less than a trainer needs to import torch and transformers and load the model.
    yield from server_with_limit(s3_server, tmp_path / "home", 200 * 1024 * 1024)


@pytest.fixture
def roomy_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    yield from server_with_limit(s3_server, tmp_path / "home", 4 << 30)


def events(server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        found: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    return found


def test_a_trainer_the_oom_killer_ends_fails_its_job_saying_so_without_a_retry(
    tight_server: ApiServer,
) -> None:
    with tight_server.client() as client:
        response = client.post("/v1/jobs", json=demo_job("oom"))
        assert response.status_code == 201, response.text
        job_id = response.json()["jobId"]
    job = tight_server.wait_for(job_id, {"FAILED", "COMPLETED"}, 300)
    assert job["state"] == "FAILED", job
    failure = job["failure"]
    assert failure["reason"] == "OUT_OF_MEMORY", failure
    message = failure["message"]
    assert "killed by signal SIGKILL: out of memory (the kernel's OOM killer" in message
    assert "MB of resident memory" in message  # the peak the launcher measured
    assert "kB of data" in message  # the demo files' size, read from the store
    assert "lower batchSize or maxSequenceLength" in message
    kinds = [event["type"] for event in events(tight_server, job_id)]
    assert "RETRY" not in kinds and kinds.count("LAUNCHED") == 1, kinds


def test_a_trainer_killed_by_anyone_else_is_a_crash_and_retried(roomy_server: ApiServer) -> None:
    """In its own cgroup, a SIGKILL that is not the OOM killer's is not taken for one."""
    with roomy_server.client() as client:
        body = demo_job("killed", epochCount=10)  # 380 steps: still running when killed
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    roomy_server.wait_for(job_id, {"RUNNING"}, 180)
    attempt = roomy_server.home / "work" / job_id / "attempt-1"
    pids = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _cwd(entry) == str(attempt)
    ]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    job = roomy_server.wait_for(job_id, {"COMPLETED", "FAILED"}, 300)
    assert job["state"] == "COMPLETED", job
    retries = [e["message"] for e in events(roomy_server, job_id) if e["type"] == "RETRY"]
    assert len(retries) == 1 and "SIGKILL" in retries[0] and "(crash)" in retries[0], retries


def _cwd(entry: Path) -> str:
    try:
        return os.readlink(entry / "cwd")
    except OSError:
        return ""


def test_the_memory_cgroup_is_read_from_proc_for_cgroup_v1_and_v2(tmp_path: Path) -> None:
    v1 = "12:pids:/x\n4:memory:/process_api/abc\n0::/\n"
    assert memory_cgroup_in(v1, tmp_path) is not None
    cgroup = memory_cgroup_in(v1, tmp_path)
    assert cgroup is not None and cgroup.version == 1
    assert cgroup.directory == tmp_path / "memory" / "process_api" / "abc"
    assert cgroup.counter_file.name == "memory.oom_control"
    cgroup.directory.mkdir(parents=True)
    cgroup.counter_file.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert cgroup.oom_kills() == 3
    # cgroup v2: one unified hierarchy; memory.events counts the kills.
    assert memory_cgroup_in("0::/system.slice/tuneforge.service\n", tmp_path) is None
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    unified = memory_cgroup_in("0::/system.slice/tuneforge.service\n", tmp_path)
    assert unified is not None and unified.version == 2
    assert unified.directory == tmp_path / "system.slice" / "tuneforge.service"
    unified.directory.mkdir(parents=True)
    (unified.directory / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\n")
    assert unified.oom_kills() == 1
    (unified.directory / "memory.events").unlink()
    assert unified.oom_kills() is None


def test_memory_messages_name_the_peak_the_data_and_what_to_do() -> None:
    assert memory_failure_details(10_400_000_000, 92_000_000, 300_000) == (
        ", at a peak of 10.4 GB of resident memory, with 92.0 MB of data (300,000 training records)"
    )
    assert memory_failure_details(310_000_000, 23_100, None) == (
        ", at a peak of 310.0 MB of resident memory, with 23.1 kB of data"
    )
    assert memory_failure_details(None, None, None) == ""
    allocator = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 68719476736 bytes."
    )
    for error in (MemoryError(), allocator):
        assert is_out_of_memory(error)
        reason, message, _ = classify(error, ", at a peak of 3.1 GB of resident memory")
        assert reason == "OUT_OF_MEMORY"
        assert message.startswith(
            "the trainer ran out of memory, at a peak of 3.1 GB of resident memory; lower "
        )
    assert not is_out_of_memory(RuntimeError("shapes do not match"))


def test_only_an_end_that_can_be_the_oom_killers_is_taken_for_one() -> None:
    kill, term = -signal.SIGKILL, -signal.SIGTERM
    own = 200 * 1024 * 1024

    def verdict(code: int, before: int | None, after: int | None, limit: int | None) -> bool:
        found = oom_verdict(code, kills_before=before, kills_after=after, own_limit=limit)
        return found is not None and found.startswith("out of memory")

    # Its own cgroup: a grown count and any failed exit (torchrun's error when a rank
    # was killed included), but a clean exit, a preemption or bad input.
    assert verdict(kill, 0, 1, own) and verdict(1, 0, 1, own)
    for code in (0, TrainerExit.PREEMPTED, TrainerExit.BAD_INPUT, term):
        assert not verdict(code, 0, 1, own)
    # The service's shared cgroup: only its own SIGKILL.
    assert verdict(kill, 4, 5, None) and not verdict(1, 4, 5, None)
    # No kill counted, or no count to read: never memory.
    assert not verdict(kill, 1, 1, own) and not verdict(kill, None, 1, None)
    assert not verdict(kill, 0, None, own)
    limited = oom_verdict(kill, kills_before=0, kills_after=1, own_limit=own)
    assert limited is not None and limited.endswith("at its memory limit of 209.7 MB)")
