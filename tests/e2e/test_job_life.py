"""A job's whole life through real HTTP, a real store and a real trainer subprocess."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from jobstore.store import JobStore
from tests.servers import ApiServer, demo_job, process_alive


def _read_csv(store: ObjectStore, uri: str) -> list[dict[str, str]]:
    found = store.get_bytes(parse_s3_uri(uri, field="uri"))
    assert found is not None, f"{uri} was not written"
    return list(csv.DictReader(io.StringIO(found[0].decode())))


def test_demo_job_runs_end_to_end(
    api_server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    with api_server.client() as client:
        response = client.post("/v1/jobs", json=demo_job("end-to-end"))
        assert response.status_code == 201, response.text
        job_id = response.json()["jobId"]
        assert response.headers["location"] == f"/v1/jobs/{job_id}"

    job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=240)
    assert job["failure"] is None
    times = job["stateTimes"]
    assert sorted(times, key=times.get) == ["QUEUED", "VALIDATING", "RUNNING", "COMPLETED"]
    progress = job["progress"]
    assert progress["step"] == progress["totalSteps"] > 0
    assert progress["tokensSeen"] > 0 and progress["validationLoss"] is not None

    training = _read_csv(object_store, job["output"]["trainingMetricsS3Uri"])
    assert list(training[0]) == [
        "step_number",
        "epoch_number",
        "training_loss",
        "perplexity",
        "token_accuracy",
    ]
    assert len(training) == progress["totalSteps"]
    losses = [float(row["training_loss"]) for row in training]
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < 0.7 * start, f"training loss did not fall: {start:.3f} -> {end:.3f}"

    validation = _read_csv(object_store, job["output"]["validationMetricsS3Uri"])
    assert list(validation[0]) == [
        "step_number",
        "epoch_number",
        "validation_loss",
        "perplexity",
        "token_accuracy",
    ]
    assert len(validation) == 3  # one evaluation per epoch

    model_dir = tmp_path / "model"
    object_store.download_prefix(parse_s3_uri(job["output"]["modelS3Uri"], field="m"), model_dir)
    assert list(model_dir.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer("What is 2 + 3?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 1

    log = object_store.get_bytes(
        S3Location(api_server.state_bucket, f"jobs/{job_id}/logs/attempt-1/trainer.log")
    )
    assert log is not None and log[0]


def test_stop_while_running(api_server: ApiServer, object_store: ObjectStore) -> None:
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("to-stop", epochCount=100)).json()["jobId"]
        api_server.wait_for(job_id, {"RUNNING"}, timeout=120)
        status, _ = JobStore(object_store, api_server.state_bucket).get_status(job_id)
        assert status.launch is not None and status.launch.pid is not None
        pid = status.launch.pid
        assert process_alive(pid)

        asked = time.monotonic()
        response = client.post(f"/v1/jobs/{job_id}/stop")
        assert response.status_code == 202
        assert response.json()["state"] == "STOPPING"
        job = api_server.wait_for(job_id, {"STOPPED"}, timeout=30)
        assert time.monotonic() - asked < 30
        assert "STOPPING" in job["stateTimes"]

        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_alive(pid), "the trainer process outlived its stopped job"

        again = client.post(f"/v1/jobs/{job_id}/stop")
        assert again.status_code == 409
        assert "already STOPPED" in again.json()["error"]["message"]


def test_concurrent_creates_with_one_token_make_one_job(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    body = demo_job("idempotent", epochCount=1)
    body["clientRequestToken"] = "same-token-20"

    def create(_: int) -> httpx.Response:
        return httpx.post(api_server.url + "/v1/jobs", json=body, timeout=60)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(create, range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    job_ids = {r.json()["jobId"] for r in responses}
    assert len(job_ids) == 1
    (job_id,) = job_ids

    api_server.wait_for(job_id, {"COMPLETED"}, timeout=240)
    store = JobStore(object_store, api_server.state_bucket)
    launches = [e for e in store.list_events(job_id) if e.type == "LAUNCHED"]
    assert len(launches) == 1, launches
    listing = httpx.get(api_server.url + "/v1/jobs", timeout=10).json()
    assert [j["jobId"] for j in listing["jobs"]] == [job_id]

    changed = dict(body, jobName="different")
    conflict = httpx.post(api_server.url + "/v1/jobs", json=changed, timeout=10)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["field"] == "clientRequestToken"
    listing = httpx.get(api_server.url + "/v1/jobs", timeout=10).json()
    assert len(listing["jobs"]) == 1


def test_job_survives_an_api_restart(api_server: ApiServer, object_store: ObjectStore) -> None:
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=demo_job("restart", epochCount=4)).json()["jobId"]
    api_server.wait_for(job_id, {"RUNNING"}, timeout=120)
    status, _ = JobStore(object_store, api_server.state_bucket).get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None

    api_server.kill()
    time.sleep(2)
    assert process_alive(status.launch.pid), "killing the API server killed the trainer"

    restarted = ApiServer(api_server.s3, api_server.home, state_bucket=api_server.state_bucket)
    restarted.start()
    try:
        job = restarted.wait_for(job_id, {"COMPLETED"}, timeout=240)
        assert job["progress"]["step"] == job["progress"]["totalSteps"]
        assert job["attempt"] == 1
    finally:
        restarted.stop()


def test_list_pages_newest_first(api_server: ApiServer) -> None:
    created = []
    with api_server.client() as client:
        for number in range(5):
            body = demo_job(f"page-{number}")
            body["trainingDataConfig"]["s3Uri"] = "s3://demo/datasets/does-not-exist.jsonl"
            created.append(client.post("/v1/jobs", json=body).json()["jobId"])
        seen: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if token:
                params["pageToken"] = token
            page = client.get("/v1/jobs", params=params).json()
            seen += [job["jobId"] for job in page["jobs"]]
            token = page.get("nextPageToken")
            if not token:
                break
    assert seen == list(reversed(created))


def test_restarted_api_stops_a_job_it_did_not_start(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    with api_server.client() as client:
        body = demo_job("restart-stop", epochCount=100)
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    api_server.wait_for(job_id, {"RUNNING"}, timeout=120)
    status, _ = JobStore(object_store, api_server.state_bucket).get_status(job_id)
    assert status.launch is not None and status.launch.pid is not None
    api_server.kill()

    restarted = ApiServer(api_server.s3, api_server.home, state_bucket=api_server.state_bucket)
    restarted.start()
    try:
        with restarted.client() as client:
            assert client.post(f"/v1/jobs/{job_id}/stop").status_code == 202
        restarted.wait_for(job_id, {"STOPPED"}, timeout=30)
        deadline = time.monotonic() + 10
        while process_alive(status.launch.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_alive(status.launch.pid)
    finally:
        restarted.stop()


def test_stop_escalates_to_sigkill_when_the_trainer_does_not_answer(
    s3_server: Any, demo_assets: None, object_store: ObjectStore, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"escalate-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_STOP_GRACE_SECONDS": "3", "TUNEFORGE_KILL_GRACE_SECONDS": "2"},
    ).start()
    try:
        with server.client() as client:
            body = demo_job("frozen", epochCount=100)
            job_id = client.post("/v1/jobs", json=body).json()["jobId"]
            server.wait_for(job_id, {"RUNNING"}, timeout=120)
            status, _ = JobStore(object_store, server.state_bucket).get_status(job_id)
            assert status.launch is not None and status.launch.pid is not None
            # A frozen trainer cannot notice the stop request, nor handle SIGTERM.
            os.kill(status.launch.pid, signal.SIGSTOP)
            assert client.post(f"/v1/jobs/{job_id}/stop").status_code == 202
            job = server.wait_for(job_id, {"STOPPED"}, timeout=30)
        assert not process_alive(status.launch.pid)
        assert "STOPPING" in job["stateTimes"]
    finally:
        server.stop()
        server.kill_trainers()
