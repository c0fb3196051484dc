"""Data, model and output URIs: `s3://` in the buckets the operator granted, on all faces.

The `auth_server` grants bucket "demo" to every tenant (tenant "elsewhere": only
"other-bucket"), and each tenant its own folder `s3://tenant-homes/<tenant>/`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from tuneforge import Client
from tuneforge.errors import PermissionDenied

from service.auth.limits import TenantPolicy
from service.errors import PermissionDenied as DomainPermissionDenied
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job
from tests.service.auth.conftest import bedrock_body, bedrock_client, unique


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
        ("trainingDataConfig.s3Uri", "s3://not-allowed/train.jsonl", 403, "is outside what"),
        ("validationDataConfig.s3Uri", "s3://not-allowed/v.jsonl", 403, "is outside what"),
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
            named = error["field"] if status != 422 else error["errors"][0]["field"]
            assert named == field, error
            assert words in error["message"], (value, error["message"])
        assert rest.get("/v1/jobs").json()["jobs"] == []  # nothing was created

    # A tenant with its own list may not use the default's buckets.
    elsewhere = auth_server.create_api_key("elsewhere")
    with auth_server.client(elsewhere) as rest:
        response = rest.post("/v1/jobs", json=demo_job(unique("elsewhere")))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "PERMISSION_DENIED"
        assert response.json()["error"]["field"] == "baseModelIdentifier"
        assert "other-bucket" in response.json()["error"]["message"]


def test_buckets_are_enforced_on_grpc_and_bedrock(auth_server: ApiServer) -> None:
    key = auth_server.create_api_key(unique("buckets-grpc"))
    with Client(auth_server.grpc_target, api_key=key, timeout=30) as client:
        with pytest.raises(PermissionDenied) as raised:
            client.create_job(_with("outputDataConfig.s3Uri", "s3://not-allowed/out/"))
        assert raised.value.field == "outputDataConfig.s3Uri"
        assert list(client.list_jobs().jobs) == []
    alpha = bedrock_client(auth_server, "AKIATENANTALPHA")
    body = bedrock_body(unique("buckets-bedrock"))
    body["trainingDataConfig"] = {"s3Uri": "s3://not-allowed/train.jsonl"}
    with pytest.raises(alpha.exceptions.AccessDeniedException) as refused:
        alpha.create_model_customization_job(**body)
    assert "trainingDataConfig.s3Uri" in str(refused.value)
    # Neither the job name nor the custom model name was kept by the refused create.
    with pytest.raises(alpha.exceptions.ResourceNotFoundException):
        alpha.get_model_customization_job(jobIdentifier=body["jobName"])
    again = bedrock_body(unique("buckets-bedrock-ok"))
    again["customModelName"] = body["customModelName"]
    arn = alpha.create_model_customization_job(**again)["jobArn"]
    alpha.stop_model_customization_job(jobIdentifier=arn)


FIELDS = (
    "baseModelIdentifier",
    "trainingDataConfig.s3Uri",
    "validationDataConfig.s3Uri",
    "outputDataConfig.s3Uri",
)


def test_a_tenant_cannot_name_another_tenants_folder_on_any_face(auth_server: ApiServer) -> None:
    """Tenant B names tenant A's home folder in each of the four fields: refused on REST
    (403 naming the field and the URI), gRPC (PERMISSION_DENIED) and Bedrock
    (AccessDeniedException), and nothing is created. Its own folder is fine."""
    owner, intruder = unique("tenant-a"), unique("tenant-b")
    intruder_key = auth_server.create_api_key(intruder)
    home = f"s3://tenant-homes/{owner}/"
    theirs_by_field = {  # a folder for a model or an output, an object for data
        field: home + ("data/train.jsonl" if "Data" in field and "output" not in field else "out/")
        for field in FIELDS
    }
    with auth_server.client(intruder_key) as rest:
        for field, theirs in theirs_by_field.items():
            response = rest.post("/v1/jobs", json=_with(field, theirs))
            assert response.status_code == 403, (field, response.text)
            error = response.json()["error"]
            assert (error["code"], error["field"]) == ("PERMISSION_DENIED", field), error
            assert theirs in error["message"] and intruder in error["message"], error
            assert f"s3://tenant-homes/{intruder}/" in error["message"], error  # its grants
        own = rest.post(
            "/v1/jobs", json=_with("outputDataConfig.s3Uri", f"s3://tenant-homes/{intruder}/out/")
        )
        assert own.status_code == 201, own.text
        rest.post(f"/v1/jobs/{own.json()['jobId']}/stop")
        assert [job["jobId"] for job in rest.get("/v1/jobs").json()["jobs"]] == [
            own.json()["jobId"]
        ]

    with Client(auth_server.grpc_target, api_key=intruder_key, timeout=30) as client:
        for field, theirs in theirs_by_field.items():
            with pytest.raises(PermissionDenied) as raised:
                client.create_job(_with(field, theirs))
            assert raised.value.field == field and theirs in str(raised.value)

    alpha = bedrock_client(auth_server, "AKIATENANTALPHA")  # tenant "alpha"
    for field, theirs in theirs_by_field.items():
        body = bedrock_body(unique("intruder"))
        if field == "baseModelIdentifier":
            body[field] = theirs
        elif field == "validationDataConfig.s3Uri":  # Bedrock's shape: a list of validators
            body["validationDataConfig"] = {"validators": [{"s3Uri": theirs}]}
        else:
            body[field.split(".")[0]] = {"s3Uri": theirs}
        with pytest.raises(alpha.exceptions.AccessDeniedException) as refused:
            alpha.create_model_customization_job(**body)
        assert theirs in str(refused.value), refused.value
        with pytest.raises(alpha.exceptions.ResourceNotFoundException):
            alpha.get_model_customization_job(jobIdentifier=body["jobName"])


def test_a_folder_grant_ends_at_a_slash() -> None:
    """Pure logic: `shared/team` grants `shared/team/...`, never `shared/team2/...`, nor
    an object named `team`; a bucket grant is the whole bucket; "*" any bucket."""
    policy = TenantPolicy("team", 0, 0, 0.0, 1, ("shared/team", "s3://whole/"), "state")
    policy.check_uri("s3://shared/team/data.jsonl", "trainingDataConfig.s3Uri")
    policy.check_uri("s3://whole/anything/at/all.jsonl", "trainingDataConfig.s3Uri")
    for outside in ("s3://shared/team2/data.jsonl", "s3://shared/team", "s3://shared/x.jsonl"):
        with pytest.raises(DomainPermissionDenied, match="granted: s3://shared/team/, s3://whole/"):
            policy.check_uri(outside, "trainingDataConfig.s3Uri")
    anything = TenantPolicy("team", 0, 0, 0.0, 1, ("*",), "state")
    anything.check_uri("s3://shared/team2/data.jsonl", "trainingDataConfig.s3Uri")


def test_any_bucket_does_not_reach_another_tenants_files() -> None:
    """Pure logic: the files bucket holds every tenant's uploads; a tenant has its own
    folder there whatever its grants, and "*" reaches no other's."""
    anything = TenantPolicy("team", 0, 0, 0.0, 1, ("*",), "state", "files/team/")
    anything.check_uri("s3://files/team/file-0.jsonl", "trainingDataConfig.s3Uri")
    anything.check_uri("s3://elsewhere/data.jsonl", "trainingDataConfig.s3Uri")
    with pytest.raises(DomainPermissionDenied, match="outside the files of tenant 'team'"):
        anything.check_uri("s3://files/other/file-0.jsonl", "trainingDataConfig.s3Uri")
    named = TenantPolicy("team", 0, 0, 0.0, 1, ("files/shared/",), "state", "files/team/")
    named.check_uri("s3://files/shared/data.jsonl", "trainingDataConfig.s3Uri")  # granted


def test_with_auth_on_nothing_is_granted_unless_the_operator_says_so(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"grants-{uuid.uuid4().hex[:10]}",
        admin_key="admin-key-for-the-grants-test-0123456789",
        extra_env={"TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true"},
    )
    server.start()
    try:
        with server.client(server.create_api_key("acme")) as rest:
            response = rest.post("/v1/jobs", json=demo_job(unique("nothing")))
            assert rest.get("/v1/jobs").json()["jobs"] == []
    finally:
        server.stop()
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["field"] == "baseModelIdentifier"
    assert (
        "granted: nothing" in error["message"] and "TUNEFORGE_ALLOWED_BUCKETS" in error["message"]
    )
