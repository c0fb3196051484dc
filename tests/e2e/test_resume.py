"""Through the API: a trainer killed with SIGKILL mid-job is relaunched by the reconciler
and resumes from its newest committed checkpoint (not from step 0); the job completes,
and both the REST and gRPC checkpoint listings show step, epoch and metrics."""

from __future__ import annotations

import os
import signal
import time

import pytest
from tuneforge import Client

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from tests.servers import ApiServer, demo_job

# The demo data in batches of 8: 38 steps an epoch, 114 in all; a checkpoint every 5.
HYPER = {"epochCount": 3, "checkpointIntervalSteps": 5, "keepCheckpoints": 3}
# Two trainer starts on a busy machine.
pytestmark = pytest.mark.timeout(1200)


def test_killed_trainer_resumes_from_its_checkpoint_and_the_job_completes(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    store = JobStore(object_store, api_server.state_bucket)
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("resume", **HYPER)).json()["jobId"]
        api_server.wait_for(job_id, {"RUNNING"}, timeout=400)
        deadline = time.monotonic() + 300
        while not client.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]:
            assert time.monotonic() < deadline, "no committed checkpoint in time"
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "RUNNING"
            time.sleep(0.2)
        status, _ = store.get_status(job_id)
        assert status.launch is not None and status.launch.pid is not None
        os.kill(status.launch.pid, signal.SIGKILL)

        job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=600)
        assert job["attempt"] == 2
        events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
        [resumed] = [e for e in events if e["type"] == "RESUMED"]
        step = int(resumed["message"].split()[3])
        assert step > 0 and (step % 5 == 0 or step % 38 == 0), resumed["message"]
        log = client.get(f"/v1/jobs/{job_id}/logs").text
        assert f"resumed from step {step}" in log

        listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]
    # Committed: every 5th step and the epoch ends 38, 76, 114; the newest 3 are kept.
    assert [(c["step"], c["epoch"]) for c in listed] == [(105, 3), (110, 3), (114, 3)]
    assert all(c["trainingLoss"] is not None for c in listed)
    assert listed[-1]["validationLoss"] is not None  # the epoch end was evaluated
    assert listed[0]["validationLoss"] is None  # step 105 was not

    with Client(api_server.grpc_target) as grpc_client:
        messages = grpc_client.list_checkpoints(job_id)
    assert [(m.step, m.epoch) for m in messages] == [(105, 3), (110, 3), (114, 3)]
    assert messages[-1].HasField("validation_loss") and not messages[0].HasField("validation_loss")
    assert messages[-1].validation_loss == listed[-1]["validationLoss"]
    assert messages[0].training_loss == listed[0]["trainingLoss"]
