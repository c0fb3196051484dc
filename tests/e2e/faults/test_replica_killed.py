"""An API replica killed -9 right after a create returns loses nothing.

Two replicas over one store. Each trial creates a job through replica A and SIGKILLs A
as soon as the create returns, before or while it launches the trainer; then A is
started again. The job must end COMPLETED, launched exactly once: replica B (or the
restarted A) launches it if A had not, and a trainer A did start lives on (its own
process session) and is recognised by pid on this shared host.
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
    events,
    serving,
    tiny_dataset,
    tiny_job,
    two_replicas,
    wait_all_terminal,
)
from tests.servers import ApiServer

TRIALS = 3


@pytest.fixture
def replicas(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, ApiServer]]:
    pair = two_replicas(s3_server, tmp_path)
    with serving(*pair):
        yield pair


@pytest.mark.timeout(600)
def test_job_created_on_a_replica_killed_right_after_runs_exactly_once(
    replicas: tuple[ApiServer, ApiServer], object_store: ObjectStore
) -> None:
    first, second = replicas
    dataset = tiny_dataset(object_store)
    job_ids = []
    for trial in range(TRIALS):
        with first.client() as client:
            job_ids.append(create(client, tiny_job(f"killed-{trial}", dataset)))
        first.kill()
        first.start()

    finished = wait_all_terminal(second, job_ids, timeout=400)
    outcomes = {}
    for job_id in job_ids:
        kinds = [event["type"] for event in events(second, job_id)]
        directories = attempt_directories([first.home, second.home], job_id)
        outcomes[job_id] = (finished[job_id]["state"], kinds.count("LAUNCHED"), len(directories))
    assert all(outcome == ("COMPLETED", 1, 1) for outcome in outcomes.values()), outcomes
