"""Data, model and output URIs: `s3://` in the buckets the operator allowed, on all faces.

The `auth_server` allows bucket "demo" (tenant "elsewhere": only "other-bucket").
"""

from __future__ import annotations

from typing import Any

import pytest
from tuneforge import Client
from tuneforge.errors import InvalidArgument

from tests.auth.conftest import bedrock_body, bedrock_client, unique
from tests.servers import ApiServer, demo_job


def _with(field: str, value: str) -> dict[str, Any]:
    body = demo_job(unique("bucket"))
    if field == "baseModelIdentifier":
        body[field] = value
    else:
        body[field.split(".")[0]] = {"s3Uri": value}
    return body


def test_uris_outside_the_allowed_buckets_are_refused(auth_server: ApiServer) -> None:
    tenant = unique("buckets")
    key = auth_server.create_api_key(tenant)
    state = auth_server.state_bucket
    cases = [
        # (field, value, status, words in the message)
        ("trainingDataConfig.s3Uri", "s3://not-allowed/train.jsonl", 400, "not one this tenant"),
        ("validationDataConfig.s3Uri", "s3://not-allowed/v.jsonl", 400, "not one this tenant"),
        ("baseModelIdentifier", f"s3://{state}/jobs/", 400, "service's own state"),
        ("outputDataConfig.s3Uri", f"s3://{state}/out/", 400, "service's own state"),
        ("outputDataConfig.s3Uri", "s3://demo/", 400, "bucket root"),
        ("outputDataConfig.s3Uri", "s3://demo", 400, "bucket root"),
        ("trainingDataConfig.s3Uri", "https://demo.example.com/train.jsonl", 422, "s3://"),
        ("trainingDataConfig.s3Uri", "file:///etc/passwd", 422, "s3://"),
        ("trainingDataConfig.s3Uri", "s3://demo/datasets/../../x.jsonl", 422, ".."),
        ("baseModelIdentifier", "s3://demo//etc/", 422, "empty"),
    ]
    with auth_server.client(key) as rest:
        for field, value, status, words in cases:
            response = rest.post("/v1/jobs", json=_with(field, value))
            assert response.status_code == status, (field, value, response.text)
            error = response.json()["error"]
            named = error["field"] if status == 400 else error["errors"][0]["field"]
            assert named == field, error
            assert words in error["message"], (value, error["message"])
        assert rest.get("/v1/jobs").json()["jobs"] == []  # nothing was created

    # A tenant with its own list may not use the default's buckets.
    elsewhere = auth_server.create_api_key("elsewhere")
    with auth_server.client(elsewhere) as rest:
        response = rest.post("/v1/jobs", json=demo_job(unique("elsewhere")))
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "baseModelIdentifier"
        assert "other-bucket" in response.json()["error"]["message"]


def test_buckets_are_enforced_on_grpc_and_bedrock(auth_server: ApiServer) -> None:
    key = auth_server.create_api_key(unique("buckets-grpc"))
    with Client(auth_server.grpc_target, api_key=key, timeout=30) as client:
        with pytest.raises(InvalidArgument) as raised:
            client.create_job(_with("outputDataConfig.s3Uri", "s3://not-allowed/out/"))
        assert raised.value.field == "outputDataConfig.s3Uri"
        assert list(client.list_jobs().jobs) == []
    alpha = bedrock_client(auth_server, "AKIATENANTALPHA")
    body = bedrock_body(unique("buckets-bedrock"))
    body["trainingDataConfig"] = {"s3Uri": "s3://not-allowed/train.jsonl"}
    with pytest.raises(alpha.exceptions.ValidationException) as refused:
        alpha.create_model_customization_job(**body)
    assert "trainingDataConfig.s3Uri" in str(refused.value)
    # Neither the job name nor the custom model name was kept by the refused create.
    with pytest.raises(alpha.exceptions.ResourceNotFoundException):
        alpha.get_model_customization_job(jobIdentifier=body["jobName"])
    again = bedrock_body(unique("buckets-bedrock-ok"))
    again["customModelName"] = body["customModelName"]
    arn = alpha.create_model_customization_job(**again)["jobArn"]
    alpha.stop_model_customization_job(jobIdentifier=arn)
