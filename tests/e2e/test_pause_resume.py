"""Pause and resume, through REST and gRPC, with real trainers: a paused job commits a
checkpoint at the step it reached and waits PAUSED with no trainer (its step stands
still); resumed, its next attempt goes on from that checkpoint, not from step 0, and the
job completes with every step trained exactly once. A paused job can be stopped; only
a paused job resumes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from tuneforge import Client
from tuneforge.errors import FailedPrecondition
from tuneforge.v1 import fine_tuning_pb2 as pb

from tests.servers import ApiServer, demo_job

# Two trainer starts on a busy machine.
pytestmark = pytest.mark.timeout(1200)


def _wait_for_step(client: httpx.Client, job_id: str, step: int) -> dict[str, Any]:
    deadline = time.monotonic() + 400
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "RUNNING" and job["progress"]["step"] >= step:
            return job
        assert job["state"] in ("QUEUED", "VALIDATING", "RUNNING"), job
        assert time.monotonic() < deadline, f"job {job_id} never reached step {step}: {job}"
        time.sleep(0.2)


def test_a_paused_job_resumes_from_the_step_it_reached(api_server: ApiServer) -> None:
    with api_server.client() as client:
        body = demo_job("pause", epochCount=20, checkpointIntervalSteps=200)
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        _wait_for_step(client, job_id, 3)

        answer = client.post(f"/v1/jobs/{job_id}/pause")
        assert answer.status_code == 202, answer.text
        assert answer.json()["pauseRequested"] is True
        assert client.post(f"/v1/jobs/{job_id}/pause").status_code == 202  # no change

        paused = api_server.wait_for(job_id, {"PAUSED"}, timeout=300)
        step = paused["progress"]["step"]
        assert 3 <= step < paused["progress"]["totalSteps"]
        committed = [
            c["step"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]
        ]
        assert step in committed  # committed before PAUSED was written
        time.sleep(3)  # no trainer: nothing moves
        still = client.get(f"/v1/jobs/{job_id}").json()
        assert (still["state"], still["progress"]["step"]) == ("PAUSED", step)

        answer = client.post(f"/v1/jobs/{job_id}/resume")
        assert answer.status_code == 202, answer.text
        assert answer.json()["pauseRequested"] is False

        done = api_server.wait_for(job_id, {"COMPLETED"}, timeout=600)
        assert done["attempt"] == 2
        events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
        types = [event["type"] for event in events]
        assert "PAUSE_REQUESTED" in types and "RESUME_REQUESTED" in types
        assert any(e["state"] == "PAUSED" for e in events if e["type"] == "STATE_CHANGED")
        [resumed] = [event for event in events if event["type"] == "RESUMED"]
        assert resumed["message"].startswith(f"resumed from step {step} "), resumed
        # Every step once: the second attempt went on where the first left off.
        rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["training"]
        assert [row["step"] for row in rows] == list(range(1, done["progress"]["totalSteps"] + 1))


def test_pause_resume_and_stop_while_paused_through_grpc(api_server: ApiServer) -> None:
    with api_server.client() as client:
        body = demo_job("pause-grpc", epochCount=30)
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        _wait_for_step(client, job_id, 1)

    with Client(api_server.grpc_target) as grpc_client:
        with pytest.raises(FailedPrecondition, match="not paused"):
            grpc_client.resume_job(job_id)
        asked = grpc_client.pause_job(job_id)
        assert asked.pause_requested
        api_server.wait_for(job_id, {"PAUSED"}, timeout=300)
        assert grpc_client.get_job(job_id).state == pb.PAUSED

        stopped = grpc_client.stop_job(job_id)
        assert stopped.stop_requested
        api_server.wait_for(job_id, {"STOPPED"}, timeout=120)
        with pytest.raises(FailedPrecondition):
            grpc_client.pause_job(job_id)
        with pytest.raises(FailedPrecondition):
            grpc_client.resume_job(job_id)
