"""A trainer that dies is relaunched within its retry budget; past it, the job fails."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from service.embedded_s3 import EmbeddedS3
from service.storage import ObjectStore
from service.store import JobStore
from tests.servers import ApiServer, demo_job


def _kill_running_trainer(server: ApiServer, store: JobStore, job_id: str) -> int:
    server.wait_for(job_id, {"RUNNING"}, timeout=120)
    status, _ = store.get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None
    os.kill(status.launch.pid, signal.SIGKILL)
    return status.launch.pid


def test_killed_trainer_is_relaunched_and_the_job_completes(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    store = JobStore(object_store, api_server.state_bucket)
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("crash-once", epochCount=2)).json()["jobId"]
    _kill_running_trainer(api_server, store, job_id)

    job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=240)
    assert job["attempt"] == 2
    status, _ = store.get_status(job_id)
    assert status.retries == {"crash": 1}
    retries = [e for e in store.list_events(job_id) if e.type == "RETRY"]
    assert len(retries) == 1 and "SIGKILL" in retries[0].message
    assert len([e for e in store.list_events(job_id) if e.type == "LAUNCHED"]) == 2


def test_crash_past_the_budget_fails_the_job(
    s3_server: EmbeddedS3, demo_assets: None, object_store: ObjectStore, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"budget-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_CRASH_RETRY_BUDGET": "0"},
    ).start()
    store = JobStore(object_store, server.state_bucket)
    try:
        with server.client() as client:
            body = demo_job("crash-no-budget", epochCount=50)
            job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        _kill_running_trainer(server, store, job_id)
        job = server.wait_for(job_id, {"FAILED"}, timeout=60)
        assert job["failure"]["reason"] == "TRAINER_CRASHED"
        message = job["failure"]["message"]
        assert "SIGKILL" in message and "retry budget" in message
        assert f"s3://{server.state_bucket}/jobs/{job_id}/logs/trainer.log" in message
        assert job["attempt"] == 1
    finally:
        server.stop()
        server.kill_trainers()
