"""Every job on its own GPUs (local launcher), with real trainers over the real API.

The server is told it has four GPUs (TUNEFORGE_GPUS=0,1,2,3) on a machine that has none:
the trainers train on the CPU, but each reports the CUDA_VISIBLE_DEVICES it was given
(its DEVICES event), which is what a trainer on a GPU host would use. Four 1-GPU jobs run
at once on four different devices; a 2-GPU job waits for two free devices and gets the
two of the trainers that were SIGKILLed; a 5-GPU job is refused at create.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.server.embedded_s3 import EmbeddedS3
from tests.e2e.faults.replicas import events
from tests.prometheus_text import samples
from tests.servers import ApiServer, demo_job


@pytest.fixture
def four_gpu_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[ApiServer]:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"gpus-{uuid.uuid4().hex[:12]}",
        extra_env={
            "TUNEFORGE_GPUS": "0,1,2,3",
            "TUNEFORGE_LOCAL_SLOTS": "1",
            # A killed trainer ends its job (FAILED) instead of being relaunched, so
            # its devices go to the job waiting for them.
            "TUNEFORGE_CRASH_RETRY_BUDGET": "0",
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


def _create(server: ApiServer, name: str, gpus: int) -> str:
    body = demo_job(name, epochCount=100) | {"resources": {"gpus": gpus}}
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["jobId"]
    return job_id


def _devices_seen(server: ApiServer, job_id: str, timeout: float = 120) -> str:
    """The CUDA_VISIBLE_DEVICES the job's trainer reported (its DEVICES event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(server, job_id):
            if event["type"] == "DEVICES":
                found = re.search(r"CUDA_VISIBLE_DEVICES=([^;]*);", event["message"])
                assert found is not None, event
                return found.group(1)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} reported no devices in {timeout} s")


def _status(server: ApiServer, object_store: ObjectStore, job_id: str) -> Any:
    return JobStore(object_store, server.state_bucket).get_status(job_id)[0]


@pytest.mark.timeout(600)
def test_each_job_trains_on_gpus_of_its_own_and_a_killed_trainers_come_back(
    four_gpu_server: ApiServer, object_store: ObjectStore
) -> None:
    server = four_gpu_server
    with server.client() as client:
        too_many = client.post("/v1/jobs", json=demo_job("five") | {"resources": {"gpus": 5}})
        assert too_many.status_code == 400, too_many.text
        error = too_many.json()["error"]
        assert error["field"] == "resources.gpus"
        assert "4 GPU(s)" in error["message"], error
        assert client.get("/v1/jobs").json()["jobs"] == []

    singles = [_create(server, f"one-{n}", 1) for n in range(4)]
    seen = {job_id: _devices_seen(server, job_id) for job_id in singles}
    assert sorted(seen.values()) == ["0", "1", "2", "3"], seen
    for job_id in singles:  # all four at once
        server.wait_for(job_id, {"VALIDATING", "RUNNING"}, timeout=120)
        launch = _status(server, object_store, job_id).launch
        assert launch.devices == [seen[job_id]]

    pair = _create(server, "two", 2)
    time.sleep(3)  # several reconcile passes: no two devices are free
    with server.client() as client:
        waiting = client.get(f"/v1/jobs/{pair}").json()
        metrics = client.get("/metrics").text
    assert (waiting["state"], waiting["queuePosition"]) == ("QUEUED", 1), waiting
    assert samples(metrics, "tuneforge_gpus", state="used") == [4.0]
    assert samples(metrics, "tuneforge_gpus", state="free") == [0.0]

    killed = singles[1:3]
    for job_id in killed:
        os.killpg(_status(server, object_store, job_id).launch.pid, signal.SIGKILL)
    for job_id in killed:
        assert server.wait_for(job_id, {"FAILED"}, timeout=60)["state"] == "FAILED"
    pair_devices = _devices_seen(server, pair, timeout=180)
    assert sorted(pair_devices.split(",")) == sorted(seen[job_id] for job_id in killed)
    launched = [e["message"] for e in events(server, pair) if e["type"] == "LAUNCHED"]
    assert launched == [f"trainer attempt 1 launched (local) on GPU(s) {pair_devices}"]
    ranks = next(e["message"] for e in events(server, pair) if e["type"] == "DEVICES")
    assert "with 2 rank(s)" in ranks, ranks

    with server.client() as client:
        for job_id in [singles[0], singles[3], pair]:
            client.post(f"/v1/jobs/{job_id}/stop")
    for job_id in [singles[0], singles[3], pair]:
        server.wait_for(job_id, {"STOPPED"}, timeout=120)
