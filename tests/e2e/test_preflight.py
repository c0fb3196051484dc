"""Preflight through the real API and trainer: warnings (truncated records, duplicates,
validation records also in training) become VALIDATION_WARNING events naming the lines,
and the validation summary (counts, token-length percentiles, truncated records, label
distribution) is in the job's description. One API server for the module."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobstore.storage import ObjectStore, S3Location
from service.server.demo import demo_datasets
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("preflight") / "home"
    api = ApiServer(s3_server, home, state_bucket=f"preflight-{uuid.uuid4().hex[:12]}")
    api.start()
    yield api
    api.stop()
    api.kill_trainers()


def upload(object_store: ObjectStore, name: str, records: list[dict[str, Any]]) -> str:
    location = S3Location("demo", f"datasets/preflight-{uuid.uuid4().hex[:8]}/{name}")
    object_store.put_bytes(location, "".join(json.dumps(r) + "\n" for r in records).encode())
    return location.uri


def run_job(server: ApiServer, body: dict[str, Any]) -> dict[str, Any]:
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code in (200, 201), response.text
        job_id = response.json()["jobId"]
    job = server.wait_for(job_id, {"COMPLETED"}, 300)
    with server.client() as client:
        job["events"] = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    return job


@pytest.fixture(scope="module")
def records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train, validation = demo_datasets()
    parse = [json.loads(line) for line in train.splitlines()][:40]
    long_completion = {
        "prompt": "Repeat the words:\nAnswer:",
        "completion": " " + " ".join(["apple", "bread", "chair"] * 30),
    }
    training = [*parse, long_completion, parse[0]]  # line 41 truncated, line 42 = line 1
    held_out = [json.loads(line) for line in validation.splitlines()][:8]
    return training, [parse[4], parse[5], *held_out]  # validation lines 1, 2 are training's


@pytest.fixture(scope="module")
def fine_tuning_job(
    server: ApiServer, object_store: ObjectStore, records: tuple[list[Any], list[Any]]
) -> dict[str, Any]:
    training, validation = records
    body = demo_job("preflight-warnings", epochCount=1, maxSequenceLength=MAX_LENGTH)
    body["trainingDataConfig"]["s3Uri"] = upload(object_store, "train.jsonl", training)
    body["validationDataConfig"]["s3Uri"] = upload(object_store, "valid.jsonl", validation)
    return run_job(server, body)


def warnings(job: dict[str, Any]) -> list[str]:
    return [e["message"] for e in job["events"] if e["type"] == "VALIDATION_WARNING"]


def test_warnings_are_job_events_naming_the_lines(fine_tuning_job: dict[str, Any]) -> None:
    train_uri = fine_tuning_job["trainingDataConfig"]["s3Uri"]
    validation_uri = fine_tuning_job["validationDataConfig"]["s3Uri"]
    found = warnings(fine_tuning_job)
    assert len(found) == 3, found
    truncated, duplicate, overlap = found
    assert truncated == (
        f"1 record is longer than maxSequenceLength {MAX_LENGTH} tokens and will be "
        f"truncated: {train_uri}:41"
    )
    assert duplicate == f"1 duplicate training record: {train_uri}:42 (same as line 1)"
    assert overlap.startswith("2 validation records are also in the training data")
    assert overlap.endswith(f"{validation_uri}:1, {validation_uri}:2")
    # The warnings come before training starts, and the job still trains.
    types = [e["type"] for e in fine_tuning_job["events"]]
    running = next(
        i for i, e in enumerate(fine_tuning_job["events"]) if (e.get("state") == "RUNNING")
    )
    assert max(i for i, t in enumerate(types) if t == "VALIDATION_WARNING") < running
    assert fine_tuning_job["progress"]["step"] > 0


def test_the_summary_counts_records_lengths_and_truncation(
    fine_tuning_job: dict[str, Any], records: tuple[list[Any], list[Any]]
) -> None:
    training, validation = records
    summary = fine_tuning_job["dataSummary"]
    assert summary["trainingRecords"] == len(training)
    assert summary["validationRecords"] == len(validation)
    assert summary["truncatedRecords"] == 1
    lengths = summary["tokenLengths"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert lengths["max"] > MAX_LENGTH  # lengths are counted before truncation
    assert lengths["p90"] <= MAX_LENGTH  # one long record in 42


def test_a_classification_summary_has_the_label_distribution(
    server: ApiServer, object_store: ObjectStore
) -> None:
    words = ["lovely", "great", "dull", "awful", "fine", "superb", "bad"]
    training = [
        {"text": f"a {word} film number {i}", "label": "negative" if i % 3 == 0 else "positive"}
        for i, word in enumerate(words * 3)
    ]
    body = demo_job("preflight-labels", epochCount=1, maxSequenceLength=MAX_LENGTH)
    body["customizationType"] = "CLASSIFICATION"
    body["trainingDataConfig"]["s3Uri"] = upload(object_store, "labels.jsonl", training)
    del body["validationDataConfig"]
    job = run_job(server, body)
    summary = job["dataSummary"]
    assert summary["labelDistribution"] == {"negative": 7, "positive": 14}
    assert summary["trainingRecords"] == 21 and summary["validationRecords"] == 0
    assert summary["truncatedRecords"] == 0
    assert warnings(job) == []
