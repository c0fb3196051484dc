"""Progress while VALIDATING: a large file visibly moves. Through a real API server and
trainer, describe (REST and gRPC) shows the phase, the bytes and records checked of
the total and a rate while preflight reads a 100,000-record file; training's first
progress replaces it. The CLI's line and bar show the same (plain data)."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuneforge import Client, convert
from tuneforge.display import ProgressView, progress_text
from tuneforge.v1 import fine_tuning_pb2 as pb

from jobstore.storage import ObjectStore, S3Location
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

RECORDS = 100_000


@pytest.fixture
def server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    api = ApiServer(s3_server, tmp_path / "home", state_bucket=f"progress-{uuid.uuid4().hex[:8]}")
    api.start()
    yield api
    api.stop()
    api.kill_trainers()


def large_dataset(object_store: ObjectStore, tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / "large.jsonl"
    with path.open("w") as file:
        for number in range(RECORDS):
            prompt = f"{number}: " + "apple bread chair dance eagle flame grape house " * 4
            file.write(json.dumps({"prompt": prompt, "completion": " river stone"}) + "\n")
    location = S3Location("demo", f"datasets/progress-{uuid.uuid4().hex[:8]}.jsonl")
    object_store.upload_file(path, location)
    return location.uri, path.stat().st_size


def test_describe_shows_the_data_checked_of_the_total_while_validating(
    server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    uri, size = large_dataset(object_store, tmp_path)
    body = {
        "jobName": "large",
        "baseModelIdentifier": "s3://demo/models/tiny-llama/",
        "trainingDataConfig": {"s3Uri": uri},
        "outputDataConfig": {"s3Uri": f"s3://demo/output/progress-{uuid.uuid4().hex[:8]}/"},
        "hyperParameters": {"epochCount": 1, "batchSize": 8, "maxSequenceLength": 128},
    }
    seen: list[dict[str, Any]] = []
    seen_by_grpc: list[dict[str, Any]] = []
    with server.client() as client, Client(server.grpc_target) as grpc:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["jobId"]
        deadline = time.monotonic() + 300
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] not in ("QUEUED", "VALIDATING"):
                break
            if job["progress"]["dataCheck"] is not None:
                seen.append(job["progress"]["dataCheck"])
                grpc_job = grpc.get_job(job_id)
                if grpc_job.state == pb.VALIDATING:
                    seen_by_grpc.append(convert.job_to_dict(grpc_job)["progress"]["dataCheck"])
            time.sleep(0.2)
        assert job["state"] == "RUNNING", job
        client.post(f"/v1/jobs/{job_id}/stop")
    assert seen, "no dataCheck was published while VALIDATING"
    assert {check["bytesTotal"] for check in seen} == {size}
    moving = [c for c in seen if 0 < c["bytesDone"] < size]
    assert moving, seen  # part way through the file (checking or tokenizing), visibly
    assert all(0 < c["recordsDone"] < RECORDS and c["recordsPerSecond"] > 0 for c in moving)
    assert {c["phase"] for c in seen} <= {"checking", "tokenizing"}
    for phase in ("checking", "tokenizing"):
        done = [c["bytesDone"] for c in seen if c["phase"] == phase]
        assert done == sorted(done)  # never goes back within a phase
    assert seen_by_grpc, "gRPC showed no dataCheck while VALIDATING"
    assert all(check["bytesTotal"] == size for check in seen_by_grpc)
    assert {check["phase"] for check in seen_by_grpc} <= {"checking", "tokenizing"}
    server.wait_for(job_id, {"STOPPED"}, 300)


def test_a_running_job_no_longer_shows_the_data_check(
    server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    """Training's first progress replaces preflight's."""
    with server.client() as client:
        body = {
            "jobName": "small",
            "baseModelIdentifier": "s3://demo/models/tiny-llama/",
            "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
            "outputDataConfig": {"s3Uri": f"s3://demo/output/progress-{uuid.uuid4().hex[:8]}/"},
            "hyperParameters": {"epochCount": 1, "batchSize": 8},
        }
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    job = server.wait_for(job_id, {"COMPLETED"}, 300)
    assert job["progress"]["dataCheck"] is None and job["progress"]["step"] > 0


def validating_job(check: pb.DataCheck) -> pb.Job:
    job = pb.Job(job_id="j", state=pb.VALIDATING)
    job.progress.data_check.CopyFrom(check)
    return job


def test_the_cli_line_and_bar_show_the_data_checked_while_validating() -> None:
    check = pb.DataCheck(
        phase="tokenizing",
        bytes_done=41_000_000,
        bytes_total=105_000_000,
        records_done=120_000,
        records_per_second=24_000.4,
    )
    job = validating_job(check)
    assert progress_text(job) == "tokenizing 120,000 records, 41/105 MB, 24,000 records/s"
    stream = io.StringIO()
    ProgressView(stream, live=True).update(job)
    assert "[#########---------------]  39%" in stream.getvalue()
    # The REST JSON and the gRPC message carry the same dataCheck.
    data = convert.job_to_dict(job)
    assert data["progress"]["dataCheck"] == {
        "phase": "tokenizing",
        "bytesDone": 41_000_000,
        "bytesTotal": 105_000_000,
        "recordsDone": 120_000,
        "recordsPerSecond": 24_000.4,
    }
    data |= {
        "jobName": "n",
        "baseModelIdentifier": "s3://b/m/",
        "trainingDataConfig": {"s3Uri": "s3://b/t.jsonl"},
        "outputDataConfig": {"s3Uri": "s3://b/o/"},
    }
    again = convert.job_from_dict(data)
    assert again.progress.data_check == check
    # Without a rate yet, and once RUNNING, the line is the training one.
    assert progress_text(validating_job(pb.DataCheck(phase="checking"))) == "checking 0 records"
    running = validating_job(check)
    running.state = pb.RUNNING
    running.progress.step = 3
    assert progress_text(running) == "step 3"
