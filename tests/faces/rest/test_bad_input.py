"""Malformed requests: each gets a 4xx that names the field, and nothing is created."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.servers import ApiServer, demo_job


def _without(path: str) -> dict[str, Any]:
    body = demo_job()
    del body[path]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = demo_job()
    target = body
    *parents, last = path.split(".")
    for parent in parents:
        target = target[parent]
    target[last] = value
    return body


CREATE_CASES: list[tuple[str, Any, int, str]] = [
    ("missing jobName", _without("jobName"), 422, "jobName"),
    ("missing trainingDataConfig", _without("trainingDataConfig"), 422, "trainingDataConfig"),
    ("missing outputDataConfig", _without("outputDataConfig"), 422, "outputDataConfig"),
    ("missing baseModelIdentifier", _without("baseModelIdentifier"), 422, "baseModelIdentifier"),
    ("jobName not a string", _with("jobName", 123), 422, "jobName"),
    ("jobName bad characters", _with("jobName", "bad name!"), 422, "jobName"),
    ("jobName too long", _with("jobName", "a" * 64), 422, "jobName"),
    ("epochCount zero", _with("hyperParameters.epochCount", 0), 422, "hyperParameters.epochCount"),
    (
        "epochCount a string",
        _with("hyperParameters.epochCount", "three"),
        422,
        "hyperParameters.epochCount",
    ),
    (
        "learningRate negative",
        _with("hyperParameters.learningRate", -0.1),
        422,
        "hyperParameters.learningRate",
    ),
    (
        "learningRate above 1",
        _with("hyperParameters.learningRate", 2.0),
        422,
        "hyperParameters.learningRate",
    ),
    (
        "batchSize huge",
        _with("hyperParameters.batchSize", 100_000),
        422,
        "hyperParameters.batchSize",
    ),
    (
        "maxSequenceLength tiny",
        _with("hyperParameters.maxSequenceLength", 1),
        422,
        "hyperParameters.maxSequenceLength",
    ),
    (
        "weightDecay out of range",
        _with("hyperParameters.weightDecay", 5),
        422,
        "hyperParameters.weightDecay",
    ),
    (
        "unknown hyperparameter",
        _with("hyperParameters.learning_rate", 0.1),
        422,
        "hyperParameters.learning_rate",
    ),
    ("unknown top-level field", _with("priority", "high"), 422, "priority"),
    (
        "training data over http",
        _with("trainingDataConfig.s3Uri", "http://example.com/train.jsonl"),
        422,
        "trainingDataConfig.s3Uri",
    ),
    (
        "model from a local path",
        _with("baseModelIdentifier", "file:///etc/passwd"),
        422,
        "baseModelIdentifier",
    ),
    (
        "path traversal in a key",
        _with("trainingDataConfig.s3Uri", "s3://demo/datasets/../secrets/x.jsonl"),
        422,
        "trainingDataConfig.s3Uri",
    ),
    (
        "training data is a folder",
        _with("trainingDataConfig.s3Uri", "s3://demo/datasets/"),
        422,
        "trainingDataConfig.s3Uri",
    ),
    (
        "bad bucket name",
        _with("outputDataConfig.s3Uri", "s3://A_B/out/"),
        422,
        "outputDataConfig.s3Uri",
    ),
    ("unsupported customizationType", _with("customizationType", "RLHF"), 422, "customizationType"),
    ("token with spaces", _with("clientRequestToken", "has spaces"), 422, "clientRequestToken"),
    ("tag value too long", _with("tags", {"team": "x" * 300}), 422, "tags.team"),
    ("body is a list", [demo_job()], 422, "body"),
]


@pytest.fixture(scope="module")
def server(s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import uuid

    server = ApiServer(
        s3_server, tmp_path_factory.mktemp("bad-input"), state_bucket=f"bad-{uuid.uuid4().hex[:8]}"
    )
    server.start()
    yield server
    server.stop()


def _assert_error(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert field.split(".")[-1] in error["message"] or error["message"]
    assert error["code"]


@pytest.mark.parametrize(
    ("name", "body", "status", "field"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
def test_create_rejects(server: ApiServer, name: str, body: Any, status: int, field: str) -> None:
    response = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    _assert_error(response, status, field)


def test_body_that_is_not_json(server: ApiServer) -> None:
    response = httpx.post(
        server.url + "/v1/jobs",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    _assert_error(response, 422, "body")
    assert "not valid JSON" in response.json()["error"]["message"]


def test_oversize_body(server: ApiServer) -> None:
    body = demo_job()
    body["tags"] = {"padding": "x" * 200}
    padded = json.dumps(body) + " " * 2_000_000
    response = httpx.post(
        server.url + "/v1/jobs",
        content=padded.encode(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


QUERY_CASES = [
    ("/v1/jobs?limit=0", 422, "limit"),
    ("/v1/jobs?limit=1000", 422, "limit"),
    ("/v1/jobs?status=SLEEPING", 422, "status"),
    ("/v1/jobs?pageToken=garbage", 400, "pageToken"),
    ("/v1/jobs/not-a-job-id", 404, "jobId"),
    ("/v1/jobs/..%2F..%2Fetc", 404, None),
]


@pytest.mark.parametrize(("path", "status", "field"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_reads_reject(server: ApiServer, path: str, status: int, field: str | None) -> None:
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("action", ["stop", "pause", "resume"])
def test_stop_pause_or_resume_of_an_unknown_job(server: ApiServer, action: str) -> None:
    response = httpx.post(server.url + f"/v1/jobs/0000000000000000/{action}", timeout=10)
    _assert_error(response, 404, "jobId")


def test_rejected_creates_leave_nothing_behind(server: ApiServer) -> None:
    for _, body, _, _ in CREATE_CASES:
        assert httpx.post(server.url + "/v1/jobs", json=body, timeout=10).status_code >= 400
    listing = httpx.get(server.url + "/v1/jobs", timeout=10).json()
    assert listing["jobs"] == []


def test_openapi_documents_every_field(server: ApiServer) -> None:
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    # The create's body: JobCreate and the REST face's own validateOnly (a dry run).
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    create = document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert set(create["properties"]) >= {
        "jobName",
        "baseModelIdentifier",
        "trainingDataConfig",
        "outputDataConfig",
        "hyperParameters",
        "clientRequestToken",
        "tags",
        "validateOnly",
    }
    assert create.get("examples")
    hyper = document["components"]["schemas"]["HyperParameters"]["properties"]
    for name, schema in hyper.items():
        assert schema.get("description"), f"hyperParameters.{name} has no description"
        # FastAPI leaves out `default: null`; a nullable field's default is "unset",
        # which its description explains.
        nullable = any(option.get("type") == "null" for option in schema.get("anyOf", []))
        assert "default" in schema or nullable, f"hyperParameters.{name} has no default"
        if nullable:
            assert "Unset" in schema["description"], f"hyperParameters.{name}: unset means?"
