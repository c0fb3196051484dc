"""Ray launcher, against a real single-node Ray cluster on 127.0.0.1.

The cluster (tests/service/control/launch/ray_cluster.py) is started for this module and torn down
after it. The real API server runs with
TUNEFORGE_LAUNCHER=ray and submits each trainer attempt through Ray's Jobs API. The Ray
node holds the S3 credentials in its own environment (the launcher does not send them by
default), as a real cluster's nodes would.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from jobstore.documents import TrainerExit
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.control.launch.ray import (
    RayLauncher,
    entrypoint,
    observed_from_job_info,
    submission_id,
)
from tests.servers import ApiServer, demo_job
from tests.service.control.launch.ray_cluster import ray_job_status, trainer_pids

JOB_ID = "0123456789abcdef"


# -- pure parts -----------------------------------------------------------------------


def test_submission_ids_come_from_validated_job_ids_and_attempts() -> None:
    assert submission_id(JOB_ID, 2) == f"tuneforge-{JOB_ID}-a2"
    with pytest.raises(ValueError, match="not a job id"):
        submission_id("x; rm -rf /", 1)
    with pytest.raises(ValueError, match="attempt"):
        submission_id(JOB_ID, 0)


def test_entrypoint_runs_the_trainer_in_a_fresh_directory_as_the_signalled_process() -> None:
    command = entrypoint("/opt/venv/bin/python", JOB_ID, 1)
    assert "mktemp -d" in command
    assert f"exec /opt/venv/bin/python -m trainer --job-id {JOB_ID}" in command
    several = entrypoint("/opt/venv/bin/python", JOB_ID, 1, processes=4)
    assert (
        "exec /opt/venv/bin/python -m trainer.torchrun --nproc-per-node 4 --standalone "
        f"-m trainer --job-id {JOB_ID}"
    ) in several


def test_credentials_are_not_sent_to_ray_unless_asked() -> None:
    environment = {
        "AWS_ENDPOINT_URL": "http://store:8333",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    kept = RayLauncher("http://127.0.0.1:1").runtime_environment(3, environment)["env_vars"]
    assert "AWS_SECRET_ACCESS_KEY" not in kept and "AWS_ACCESS_KEY_ID" not in kept
    assert kept["AWS_ENDPOINT_URL"] == "http://store:8333"
    assert kept["TUNEFORGE_ATTEMPT"] == "3"
    forwarded = RayLauncher("http://127.0.0.1:1", forward_credentials=True).runtime_environment(
        1, environment
    )["env_vars"]
    assert forwarded["AWS_SECRET_ACCESS_KEY"] == "secret"


@pytest.mark.parametrize(
    ("info", "alive", "exit_code"),
    [
        ({"status": "PENDING"}, True, None),
        ({"status": "RUNNING"}, True, None),
        ({"status": "SUCCEEDED", "driver_exit_code": 0}, False, 0),
        ({"status": "FAILED", "driver_exit_code": 2, "message": "bad input"}, False, 2),
        ({"status": "FAILED", "driver_exit_code": -9}, False, -9),
        ({"status": "FAILED", "message": "runtime env setup failed"}, False, None),
        ({"status": "STOPPED"}, False, int(TrainerExit.PREEMPTED)),
        (None, False, None),
    ],
)
def test_ray_job_states_map_to_observed(
    info: dict[str, Any] | None, alive: bool, exit_code: int | None
) -> None:
    observed = observed_from_job_info(info)
    assert (observed.alive, observed.exit_code) == (alive, exit_code)


def test_a_job_on_ray_completes(ray_api_server: ApiServer, ray_cluster: str) -> None:
    with ray_api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("ray-ok", epochCount=1)).json()["jobId"]
    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=400)
    assert job["attempt"] == 1
    assert job["progress"]["step"] > 0
    ray_job = ray_job_status(ray_cluster, job_id, 1)
    assert ray_job["status"].endswith("SUCCEEDED") and ray_job["driver_exit_code"] == 0


def test_a_stop_stops_a_job_on_ray(ray_api_server: ApiServer, ray_cluster: str) -> None:
    with ray_api_server.client() as client:
        body = demo_job("ray-stop", epochCount=100)
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        ray_api_server.wait_for(job_id, {"RUNNING"}, timeout=400)
        assert client.post(f"/v1/jobs/{job_id}/stop").status_code == 202
    job = ray_api_server.wait_for(job_id, {"STOPPED"}, timeout=200)
    assert job["attempt"] == 1
    ray_job = ray_job_status(ray_cluster, job_id, 1)
    assert ray_job["status"].endswith(("SUCCEEDED", "STOPPED")), ray_job
    assert trainer_pids(job_id) == []


def test_a_killed_trainer_on_ray_is_relaunched_and_completes(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    store = JobStore(object_store, ray_api_server.state_bucket)
    with ray_api_server.client() as client:
        body = demo_job("ray-crash", epochCount=1)
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    ray_api_server.wait_for(job_id, {"RUNNING"}, timeout=400)
    (pid,) = trainer_pids(job_id)
    os.kill(pid, signal.SIGKILL)

    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=500)
    assert job["attempt"] == 2
    status, _ = store.get_status(job_id)
    assert status.retries == {"crash": 1}
    first = ray_job_status(ray_cluster, job_id, 1)
    assert first["status"].endswith("FAILED")
    assert ray_job_status(ray_cluster, job_id, 2)["status"].endswith("SUCCEEDED")
    retry = [e for e in store.list_events(job_id) if e.type == "RETRY"]
    assert len(retry) == 1, retry
