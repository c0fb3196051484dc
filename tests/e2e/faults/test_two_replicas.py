"""Two API replicas over one store: every job runs exactly once.

Both replicas run a reconciler with the `local` launcher on this one host. A replica
that sees a trainer another replica launched judges it by `status.launch` (host, pid,
process start ticks): `LocalLauncher.observe` checks that pid on this host, which is
right here because both replicas share the host. Replicas on different hosts would see
`alive=None` (another host's trainer) and judge it by its heartbeat instead.

Cost: 50 real trainers, two at a time in all (each replica counts every launched job
against its slots); most of each trainer's time is importing torch. About 10-13 minutes
on a busy 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstore.storage import ObjectStore
from service.server.embedded_s3 import EmbeddedS3
from tests.e2e.faults.replicas import (
    attempt_directories,
    create,
    launch_count,
    serving,
    tiny_dataset,
    tiny_job,
    two_replicas,
    wait_all_terminal,
)
from tests.servers import ApiServer

JOBS = 50
SLOTS_PER_REPLICA = 2


@pytest.fixture
def replicas(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, ApiServer]]:
    pair = two_replicas(s3_server, tmp_path, {"TUNEFORGE_LOCAL_SLOTS": str(SLOTS_PER_REPLICA)})
    with serving(*pair):
        yield pair


@pytest.mark.timeout(1500)
def test_fifty_jobs_through_two_replicas_each_run_exactly_once(
    replicas: tuple[ApiServer, ApiServer], object_store: ObjectStore
) -> None:
    first, second = replicas
    dataset = tiny_dataset(object_store)
    # Stopped across replicas: a long job made on each, stopped at once through the other.
    with first.client() as a, second.client() as b:
        long_on_first = create(a, tiny_job("long-a", dataset, epochCount=100))
        long_on_second = create(b, tiny_job("long-b", dataset, epochCount=100))
        assert b.post(f"/v1/jobs/{long_on_first}/stop").status_code == 202
        assert a.post(f"/v1/jobs/{long_on_second}/stop").status_code == 202
        job_ids = [
            create(a if index % 2 == 0 else b, tiny_job(f"job-{index}", dataset))
            for index in range(JOBS)
        ]
        # Each replica describes the jobs the other created, the same as their creator.
        for index, job_id in enumerate(job_ids):
            creator, other = (a, b) if index % 2 == 0 else (b, a)
            mine, theirs = creator.get(f"/v1/jobs/{job_id}"), other.get(f"/v1/jobs/{job_id}")
            assert theirs.status_code == 200, theirs.text
            assert theirs.json()["jobName"] == mine.json()["jobName"] == f"job-{index}"

    stopped = wait_all_terminal(second, [long_on_first, long_on_second], timeout=240)
    assert {job["state"] for job in stopped.values()} == {"STOPPED"}, stopped
    finished = wait_all_terminal(first, job_ids, timeout=1400)

    homes = [first.home, second.home]
    not_completed = {i: j["state"] for i, j in finished.items() if j["state"] != "COMPLETED"}
    assert not not_completed, not_completed
    duplicated = {}
    for job_id in job_ids:
        launches = launch_count(first, job_id)
        directories = attempt_directories(homes, job_id)
        if launches != 1 or len(directories) != 1:
            duplicated[job_id] = (launches, [str(d) for d in directories])
    assert not duplicated, duplicated
    # Every job was launched under exactly one replica's home (either may win a claim).
    launched_by = {
        home.name: sum(1 for job_id in job_ids if (home / "work" / job_id).is_dir())
        for home in homes
    }
    assert sum(launched_by.values()) == JOBS, launched_by
