"""Trainers killed -9 at random points: every job ends COMPLETED with the same model.

An uninterrupted reference job runs first. Then ten seeded trials of the same job
(same data, hyperparameters and seed): each trial's first trainer is SIGKILLed once it
has reached a randomly drawn optimizer step (seeded), wherever it is in its loop at
that moment: mid-step, mid-checkpoint-upload, mid-evaluation. The reconciler sees a
crash (within the retry budget) and launches attempt 2, which resumes from the newest
committed checkpoint.

Asserted per trial: COMPLETED; one LAUNCHED event per attempt and one RETRY per
relaunch (never a duplicate launch); the final weights equal the reference run's
byte for byte (exact resume: same data order, RNG streams and optimizer state on CPU).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jobstore.storage import ObjectStore, parse_s3_uri
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3
from tests.e2e.faults.replicas import (
    create,
    events,
    one_server,
    serving,
    tiny_dataset,
    tiny_job,
    wait_all_terminal,
)
from tests.servers import ApiServer

TRIALS = 10
SEED = 6
# 48 records in batches of 2: 24 steps an epoch, 72 in all; a checkpoint every 10 steps
# and at each epoch end, so kills land both between and right after checkpoints.
HYPER: dict[str, Any] = {
    "epochCount": 3,
    "batchSize": 2,
    "checkpointIntervalSteps": 10,
    "keepCheckpoints": 2,
}
TOTAL_STEPS = 72
# A toy step takes 10-20 ms, so a kill lands some steps after the one drawn: the step is
# seen a heartbeat and a poll later. Kills are drawn from the first two epochs, leaving
# the third (24 steps, three checkpoints and the final save) for that lag, so that
# every trial is interrupted before it ends.
LAST_KILL_STEP = 48


def _trainer_pids(work: Path) -> list[int]:
    """Processes whose working directory is `work` (one trainer attempt)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == str(work.resolve()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _final_weights(object_store: ObjectStore, store: JobStore, job_id: str) -> bytes:
    output = parse_s3_uri(store.get_spec(job_id).output_prefix, field="output")
    found = object_store.get_bytes(output.child("model", "model.safetensors"))
    assert found is not None, f"{job_id}: no final model"
    return found[0]


@pytest.fixture
def server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    # Two slots: trials overlap a little, without ten trainers fighting over two cores.
    # The kill loop sees a trainer's step through its heartbeats. At the tests' usual one
    # a second, a trainer can go from a heartbeat before its kill step to the job's end
    # before the next, and that trial is never interrupted.
    api = one_server(
        s3_server,
        tmp_path / "home",
        {"TUNEFORGE_LOCAL_SLOTS": "2", "TUNEFORGE_TRAINER_HEARTBEAT_SECONDS": "0.2"},
    )
    with serving(api):
        yield api


@pytest.mark.timeout(1500)
def test_trainers_killed_at_random_points_all_jobs_complete_with_the_same_model(
    server: ApiServer, object_store: ObjectStore
) -> None:
    store = JobStore(object_store, server.state_bucket)
    chooser = random.Random(SEED)
    dataset = tiny_dataset(object_store, records=48)
    with server.client() as client:
        reference = create(client, tiny_job("kill-reference", dataset, **HYPER))
        job_ids = [
            create(client, tiny_job(f"kill-{trial}", dataset, **HYPER)) for trial in range(TRIALS)
        ]

        kill_steps = {job_id: chooser.randint(1, LAST_KILL_STEP) for job_id in job_ids}
        killed: dict[str, int] = {}
        pending = set(job_ids)
        deadline = time.monotonic() + 900
        with ThreadPoolExecutor(max_workers=len(job_ids)) as readers:
            while pending and time.monotonic() < deadline:
                # The trainers' steps as they wrote them (the store, not a describe, which
                # may be up to a second old: docs/scaling.md), read at once so that each
                # kill lands near its step.
                ids = sorted(pending)
                for job_id, (status, _) in zip(
                    ids, readers.map(store.get_status, ids), strict=True
                ):
                    if status.state.is_terminal():
                        pending.discard(job_id)
                        continue
                    attempt = status.launch.attempt if status.launch else 0
                    if attempt != 1 or status.progress.step < kill_steps[job_id]:
                        continue
                    pids = _trainer_pids(server.home / "work" / job_id / "attempt-1")
                    if not pids:
                        continue  # not found this time (it may be ending): looked for again
                    for pid in pids:
                        # One that ended since the scan is an allowed miss, not an error.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed[job_id] = status.progress.step
                    pending.discard(job_id)
                time.sleep(0.05)

    finished = wait_all_terminal(server, [reference, *job_ids], timeout=900)
    # The kill steps are drawn against this: a change of batching must not put them past
    # the end of the job.
    assert store.get_status(reference)[0].progress.totalSteps == TOTAL_STEPS
    expected = _final_weights(object_store, store, reference)
    outcomes = {}
    for job_id in job_ids:
        kinds = [event["type"] for event in events(server, job_id)]
        same = (
            finished[job_id]["state"] == "COMPLETED"
            and _final_weights(object_store, store, job_id) == expected
        )
        outcomes[job_id] = (
            finished[job_id]["state"],
            killed.get(job_id),
            kinds.count("LAUNCHED"),
            kinds.count("RETRY"),
            kinds.count("RESUMED"),
            same,
        )
    assert finished[reference]["state"] == "COMPLETED"
    assert all(state == "COMPLETED" for state, *_ in outcomes.values()), outcomes
    # Each relaunch follows exactly one RETRY: no attempt launched twice.
    assert all(launched == 1 + retried for _, _, launched, retried, _, _ in outcomes.values()), (
        outcomes
    )
    # The kills really interrupted training, and the relaunches resumed mid-job.
    interrupted = sum(1 for _, _, _, retried, _, _ in outcomes.values() if retried)
    assert interrupted >= TRIALS - 1, (kill_steps, outcomes)
    assert sum(1 for *_, resumed, _ in outcomes.values() if resumed) >= TRIALS // 2, outcomes
    # Exact resume: every trial's model is the uninterrupted run's, byte for byte.
    assert all(same for *_, same in outcomes.values()), outcomes
