"""A malformed dataset fails the job in VALIDATING, naming the file and the line."""

from __future__ import annotations

import json
import uuid

from jobstore.storage import ObjectStore, S3Location
from tests.servers import ApiServer, demo_job


def test_malformed_jsonl_fails_in_validating(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    key = f"datasets/broken-{uuid.uuid4().hex[:8]}.jsonl"
    lines = [
        json.dumps({"prompt": "What is 1 + 1?", "completion": " 2"}),
        json.dumps({"prompt": "What is 2 + 2?", "completion": " 4"}),
        '{"prompt": "What is 3 + 3?", "completion": ',  # line 3: not JSON
        json.dumps({"prompt": "What is 4 + 4?", "completion": " 8"}),
        json.dumps({"prompt": "What is 5 + 5?"}),  # line 5: no completion
    ]
    object_store.put_bytes(S3Location("demo", key), ("\n".join(lines) + "\n").encode())
    body = demo_job("broken-data")
    body["trainingDataConfig"]["s3Uri"] = f"s3://demo/{key}"

    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    job = api_server.wait_for(job_id, {"FAILED"}, timeout=120)

    assert job["failure"]["reason"] == "DATA_VALIDATION"
    message = job["failure"]["message"]
    assert f"s3://demo/{key}:3:" in message
    assert f"s3://demo/{key}:5:" in message
    assert "completion" in message
    assert "VALIDATING" in job["stateTimes"] and "RUNNING" not in job["stateTimes"]
    assert job["progress"]["step"] == 0
    training_metrics = object_store.head(
        S3Location("demo", job["output"]["trainingMetricsS3Uri"][len("s3://demo/") :])
    )
    assert training_metrics is None, "a training step ran on invalid data"
