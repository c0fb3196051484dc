"""An API replica killed -9 right after a create returns loses nothing.

Two replicas over one store. Each trial creates a job through replica A and SIGKILLs A
as soon as the create returns, before or while it launches the trainer; then A is
started again. The job must end COMPLETED with exactly one trainer run: replica B (or
the restarted A) launches it if A had not, and a trainer A did start lives on (its own
process session) and is recognised by pid on this shared host, or, when A died before
recording the pid, by its heartbeats: a trainer slow to start (a cold import on this
busy machine) is not launched a second time before the start timeout.

A kill between a launch's claim and its trainer's start leaves a claim with no trainer
(and maybe no LAUNCHED event); that attempt is relaunched after the start timeout, with a
RETRY saying so.
"""

from __future__ import annotations

import re
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
# The RETRY of an attempt relaunched because it was never heard from since its launch.
NEVER_STARTED = re.compile(
    r"the trainer of attempt (\d+) sent no heartbeat in the .* since its launch"
)


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
    for job_id in job_ids:
        found = events(second, job_id)
        history = [f"{event['type']}: {event['message']}" for event in found]
        assert finished[job_id]["state"] == "COMPLETED", history
        # A trainer that ran wrote to its attempt's log; a claim killed before its
        # trainer started leaves at most an empty log.
        ran = [
            directory
            for directory in attempt_directories([first.home, second.home], job_id)
            if (directory / "trainer.log").exists() and (directory / "trainer.log").stat().st_size
        ]
        assert len(ran) == 1, (ran, history)
        # The attempt that ran was launched with its event; any other attempt was a claim
        # whose replica died before starting its trainer (maybe before its event too),
        # relaunched after the start timeout saying so.
        attempt = int(ran[0].name.removeprefix("attempt-"))
        assert f"LAUNCHED: trainer attempt {attempt} launched" in " | ".join(history), history
        relaunched = {
            int(match.group(1))
            for event in found
            if event["type"] == "RETRY"
            and (match := NEVER_STARTED.search(event["message"])) is not None
        }
        assert relaunched == set(range(1, attempt)), history
