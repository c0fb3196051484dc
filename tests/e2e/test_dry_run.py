"""Dry runs: `POST /v1/jobs` with `validateOnly: true` (and gRPC's `validate_only`) runs
the job's VALIDATING stage, the trainer's own preflight in a subprocess of the real API
server, over the real store, and answers its report without creating a job.

A bad dataset names every bad line (file:line) and leaves nothing under the state
bucket's job prefixes; a good one's token counts and steps are those the same job then
reports when it trains to COMPLETED; the gRPC face answers the same report; a bad request
is refused as a create is.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
from google.protobuf import json_format
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore, S3Location
from tests.servers import ApiServer, demo_job

# The dry run imports torch and transformers in its own process: seconds, not minutes.
DRY_RUN_SECONDS = 120


def _upload(object_store: ObjectStore, lines: list[str], name: str) -> str:
    key = f"datasets/dry-run-{name}-{uuid.uuid4().hex[:8]}.jsonl"
    object_store.put_bytes(S3Location("demo", key), ("\n".join(lines) + "\n").encode())
    return f"s3://demo/{key}"


def _dry_run(server: ApiServer, body: dict[str, Any]) -> dict[str, Any]:
    with server.client() as client:
        response = client.post(
            "/v1/jobs", json={**body, "validateOnly": True}, timeout=DRY_RUN_SECONDS
        )
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _state_keys(server: ApiServer, object_store: ObjectStore) -> list[str]:
    """Every key of the server's state bucket."""
    location = S3Location(server.state_bucket, "")
    return sorted(item["key"] for item in object_store.list_objects(location))


def _job_keys(keys: list[str]) -> list[str]:
    """The keys a create writes: job documents, the tenant's index, idempotency records,
    the tokenized-data cache (not the markers a server writes at start)."""
    prefixes = ("jobs/", "tenants/", "active/", "idempotency/", "cache/")
    return [key for key in keys if key.startswith(prefixes) and key != "tenants/.complete"]


def test_a_bad_dataset_names_every_bad_line_and_creates_nothing(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    good = {"prompt": "What is 1 + 1?", "completion": " 2"}
    training = _upload(
        object_store,
        [
            json.dumps(good),
            '{"prompt": "What is 2 + 2?", "completion": ',  # 2: not JSON
            json.dumps(good),
            json.dumps({"prompt": "What is 4 + 4?"}),  # 4: no completion
            json.dumps(good),
            json.dumps(["not", "an", "object"]),  # 6: not an object
            json.dumps({"prompt": "   ", "completion": " 7"}),  # 7: an empty prompt
            json.dumps(good),
        ],
        "bad-train",
    )
    validation = _upload(
        object_store,
        [json.dumps(good), json.dumps({"completion": " 3"})],  # 2: no prompt
        "bad-validation",
    )
    body = demo_job("dry-bad")
    body["trainingDataConfig"]["s3Uri"] = training
    body["validationDataConfig"]["s3Uri"] = validation
    before = _state_keys(api_server, object_store)

    report = _dry_run(api_server, body)

    assert report["valid"] is False
    assert report["errorCount"] == 5
    assert len(report["errors"]) == 5
    for where in (f"{training}:2: ", f"{training}:4: ", f"{training}:6: ", f"{training}:7: "):
        assert sum(error.startswith(where) for error in report["errors"]) == 1, (
            where,
            report["errors"],
        )
    assert sum(error.startswith(f"{validation}:2: ") for error in report["errors"]) == 1
    assert any("not valid JSON" in error for error in report["errors"])
    assert any('missing "completion"' in error for error in report["errors"])
    assert report["training"]["records"] == 4  # the well-formed ones
    assert report["validation"]["records"] == 1
    assert report["training"]["tokens"] is None  # counted once every record is well-formed
    assert report["totalSteps"] is None and report["estimate"] is None

    with api_server.client() as client:
        assert client.get("/v1/jobs").json()["jobs"] == []
    after = _state_keys(api_server, object_store)
    # Nothing of a job; the server's own start-up writes (the queue's order, the tenant
    # index's marker) may land meanwhile.
    assert _job_keys(after) == []
    assert set(after) - set(before) <= {"queue.json", "tenants/.complete"}
    # The scratch directory of the dry run is gone with it.
    dry_runs = api_server.home / "dry-runs"
    assert not dry_runs.exists() or not any(dry_runs.iterdir())


def test_a_good_datasets_counts_are_what_the_job_then_reports(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    records = []
    for index in range(30):
        # Completions of 1 to 12 words: the longest go past maxSequenceLength 32 (cut).
        answer = " ".join(words[: 1 + index % len(words)])
        records.append(json.dumps({"prompt": f"Count {index}:", "completion": f" {answer}"}))
    training = _upload(object_store, records, "good-train")
    validation = _upload(
        object_store,
        [json.dumps({"prompt": f"Say: {w} {w}", "completion": " ok"}) for w in words[:6]],
        "good-validation",
    )
    body = demo_job(
        "dry-good",
        epochCount=2,
        batchSize=4,
        gradientAccumulationSteps=2,
        maxSequenceLength=32,
        learningRate=0.001,
    )
    body["trainingDataConfig"]["s3Uri"] = training
    body["validationDataConfig"]["s3Uri"] = validation

    report = _dry_run(api_server, body)

    assert report["valid"] is True, report["errors"]
    assert report["errors"] == [] and report["errorCount"] == 0
    assert report["maxSequenceLength"] == 32
    assert report["training"]["records"] == 30
    assert report["validation"]["records"] == 6
    assert report["training"]["examples"] == 30
    # 30 examples, 4 a batch: 8 batches an epoch, 2 a step: 4 steps an epoch.
    assert report["stepsPerEpoch"] == 4 and report["totalSteps"] == 8
    over = report["training"]["overMaxSequenceLength"]
    assert over > 0
    assert all(
        line.startswith(f"{training}:") for line in report["training"]["overMaxSequenceLengthLines"]
    )
    assert any("longer than maxSequenceLength 32" in warning for warning in report["warnings"])
    assert report["trainingTokens"] == 2 * report["training"]["tokens"]
    # Every truncated example is 32 tokens; the shorter ones their own length.
    assert report["training"]["tokens"] <= 30 * 32
    estimate = report["estimate"]
    assert estimate["device"] == "cpu" and estimate["devices"] == 1
    assert estimate["parameters"] > 0 and estimate["seconds"] > 0
    assert "assumed sustained" in estimate["assumption"]
    with api_server.client() as client:
        assert client.get("/v1/jobs").json()["jobs"] == []

    with api_server.client() as client:
        created = client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = api_server.wait_for(created.json()["jobId"], {"COMPLETED"}, timeout=300)

    assert job["progress"]["totalSteps"] == report["totalSteps"]
    assert job["progress"]["step"] == report["totalSteps"]
    assert job["progress"]["tokensSeen"] == report["trainingTokens"]
    summary = job["dataSummary"]
    assert summary["trainingRecords"] == report["training"]["records"]
    assert summary["validationRecords"] == report["validation"]["records"]
    assert summary["truncatedRecords"] == over + report["validation"]["overMaxSequenceLength"]
    assert summary["tokenLengths"] == report["training"]["tokenLengths"]


def test_grpc_validate_only_answers_the_same_report(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    training = _upload(
        object_store,
        [
            json.dumps({"prompt": "What is 1 + 1?", "completion": " 2"}),
            "{not json",  # 2
            json.dumps({"prompt": "What is 3 + 3?", "completion": " 6"}),
            json.dumps({"prompt": "What is 4 + 4?", "completion": ""}),  # 4: empty completion
        ],
        "grpc-bad",
    )
    body = demo_job("dry-grpc")
    body["trainingDataConfig"]["s3Uri"] = training
    bad_rest = _dry_run(api_server, body)
    good_rest = _dry_run(api_server, demo_job("dry-grpc-good", epochCount=1))

    with grpc.insecure_channel(api_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        answers = []
        for rest_body in (body, demo_job("dry-grpc-good", epochCount=1)):
            request = json_format.ParseDict(rest_body, pb.CreateJobRequest())
            request.validate_only = True
            answers.append(stub.CreateJob(request, timeout=DRY_RUN_SECONDS))

    for answer, rest in zip(answers, (bad_rest, good_rest), strict=True):
        assert not answer.HasField("job")
        grpc_report = json_format.MessageToDict(answer.validation_report)
        assert _comparable(grpc_report) == _comparable(rest)
    assert answers[0].validation_report.valid is False
    assert answers[0].validation_report.error_count == 2
    assert [e.split(": ")[0] for e in answers[0].validation_report.errors] == [
        f"{training}:2",
        f"{training}:4",
    ]
    assert answers[1].validation_report.valid is True
    assert answers[1].validation_report.training.tokens > 0
    with api_server.client() as client:
        assert client.get("/v1/jobs").json()["jobs"] == []
    assert _job_keys(_state_keys(api_server, object_store)) == []


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report as plain values both faces agree on: proto JSON spells int64 as strings
    and leaves out what is empty or unset; REST sends nulls and empty lists."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            kept = {key: plain(item) for key, item in value.items()}
            return {key: item for key, item in kept.items() if item not in (None, [], {}, 0)}
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool):
            return value or None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    result: dict[str, Any] = plain(report)
    return result


def test_a_bad_request_with_validate_only_is_refused_naming_the_field(
    api_server: ApiServer,
) -> None:
    with api_server.client() as client:
        body = demo_job("dry-refused", epochCount=0)
        response = client.post("/v1/jobs", json={**body, "validateOnly": True})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "hyperParameters.epochCount"

        body = demo_job("dry-refused")
        del body["trainingDataConfig"]
        response = client.post("/v1/jobs", json={**body, "validateOnly": True})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "trainingDataConfig"

        response = client.post("/v1/jobs", json={**demo_job("dry-refused"), "validateOnly": "x"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "validateOnly"

        assert client.get("/v1/jobs").json()["jobs"] == []

    with grpc.insecure_channel(api_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        refused = demo_job("dry-refused", epochCount=0)
        request = json_format.ParseDict(refused, pb.CreateJobRequest())
        request.validate_only = True
        try:
            stub.CreateJob(request, timeout=30)
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "epochCount" in (error.details() or "")
        else:
            raise AssertionError("a bad validate_only request was answered")
