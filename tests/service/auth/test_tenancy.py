"""Tenant isolation on all three faces: another tenant's job is 404, never 403.

Tenants "alpha" and "bravo" each have an API key (REST, gRPC, Bedrock bearer) and a
Bedrock SigV4 key pair (tests/service/auth/conftest.py); only this module uses them.
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from tuneforge import Client
from tuneforge.errors import NotFound
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from tests.servers import ApiServer, demo_job
from tests.service.auth.conftest import bedrock_body, bedrock_client, unique

ALPHA_SIGV4, BRAVO_SIGV4 = "AKIATENANTALPHA", "AKIATENANTBRAVO"


@pytest.fixture(scope="module")
def keys(auth_server: ApiServer) -> dict[str, str]:
    return {tenant: auth_server.create_api_key(tenant) for tenant in ("alpha", "bravo")}


def _not_found_body(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 404, response.text
    body: dict[str, object] = response.json()["error"]
    return body


def test_rest_other_tenant_gets_404_on_every_operation(
    auth_server: ApiServer, keys: dict[str, str]
) -> None:
    with auth_server.client(keys["alpha"]) as alpha, auth_server.client(keys["bravo"]) as bravo:
        created = alpha.post("/v1/jobs", json=demo_job(unique("rest-iso")))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        assert alpha.get(f"/v1/jobs/{job_id}").status_code == 200
        assert alpha.get(f"/v1/jobs/{job_id}/events").status_code == 200

        # Exactly what an id that never existed gets: nothing tells bravo the job exists.
        never = "0" * len(job_id)
        for method, path in (
            ("GET", "/v1/jobs/{}"),
            ("POST", "/v1/jobs/{}/stop"),
            ("GET", "/v1/jobs/{}/events"),
            ("GET", "/v1/jobs/{}/checkpoints"),
            ("GET", "/v1/jobs/{}/logs"),
            ("GET", "/v1/jobs/{}/metrics"),
        ):
            theirs = _not_found_body(bravo.request(method, path.format(job_id)))
            missing = _not_found_body(bravo.request(method, path.format(never)))
            assert theirs["code"] == missing["code"] == "NOT_FOUND", (method, path)
            assert str(theirs["message"]).replace(job_id, never) == missing["message"]

        assert job_id not in {job["jobId"] for job in bravo.get("/v1/jobs").json()["jobs"]}
        assert job_id in {job["jobId"] for job in alpha.get("/v1/jobs").json()["jobs"]}
        # bravo's stop did nothing; alpha's own stop works.
        assert alpha.get(f"/v1/jobs/{job_id}").json()["stopRequested"] is False
        assert alpha.post(f"/v1/jobs/{job_id}/stop").status_code == 202


def test_grpc_other_tenant_gets_not_found_on_every_method(
    auth_server: ApiServer, keys: dict[str, str]
) -> None:
    with (
        Client(auth_server.grpc_target, api_key=keys["alpha"], timeout=30) as alpha,
        Client(auth_server.grpc_target, api_key=keys["bravo"], timeout=30) as bravo,
    ):
        job_id = alpha.create_job(demo_job(unique("grpc-iso"))).job.job_id
        assert alpha.get_job(job_id).job_id == job_id
        calls = {
            "GetJob": lambda: bravo.get_job(job_id),
            "StopJob": lambda: bravo.stop_job(job_id),
            "ListJobEvents": lambda: bravo.list_job_events(job_id),
            "ListCheckpoints": lambda: bravo.list_checkpoints(job_id),
            "ReadJobLog": lambda: bravo.read_job_log(job_id),
            "WatchJob": lambda: next(iter(bravo.watch(job_id))),
        }
        for name, call in calls.items():
            with pytest.raises(NotFound):
                call()
                pytest.fail(f"{name} answered for another tenant's job")
        listed = bravo.list_jobs(page_size=100).jobs
        assert job_id not in {job.job_id for job in listed}
        assert job_id in {job.job_id for job in alpha.list_jobs(page_size=100).jobs}
        assert alpha.get_job(job_id).stop_requested is False
        alpha.stop_job(job_id)

    # The bare generated stub sees the same: NOT_FOUND, not PERMISSION_DENIED.
    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetJob(
                pb.GetJobRequest(job_id=job_id),
                metadata=(("authorization", f"Bearer {keys['bravo']}"),),
                timeout=30,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_bedrock_other_tenant_gets_not_found_by_id_name_and_arn(
    auth_server: ApiServer, keys: dict[str, str]
) -> None:
    alpha = bedrock_client(auth_server, ALPHA_SIGV4)
    bravo = bedrock_client(auth_server, BRAVO_SIGV4)
    name = unique("bedrock-iso")
    arn = alpha.create_model_customization_job(**bedrock_body(name))["jobArn"]
    job_id = arn.rsplit("/", 1)[1]
    assert alpha.get_model_customization_job(jobIdentifier=name)["jobArn"] == arn

    for identifier in (name, arn, job_id):
        with pytest.raises(bravo.exceptions.ResourceNotFoundException):
            bravo.get_model_customization_job(jobIdentifier=identifier)
        with pytest.raises(bravo.exceptions.ResourceNotFoundException):
            bravo.stop_model_customization_job(jobIdentifier=identifier)
    with pytest.raises(bravo.exceptions.ResourceNotFoundException):
        bravo.get_custom_model(modelIdentifier=f"{name}-model")
    listed = bravo.list_model_customization_jobs(maxResults=100)
    assert arn not in {job["jobArn"] for job in listed["modelCustomizationJobSummaries"]}

    # Job names (and custom model names) are per tenant: bravo may use alpha's.
    bravo_arn = bravo.create_model_customization_job(**bedrock_body(name))["jobArn"]
    assert bravo_arn != arn
    assert bravo.get_model_customization_job(jobIdentifier=name)["jobArn"] == bravo_arn
    assert alpha.get_model_customization_job(jobIdentifier=name)["jobArn"] == arn

    # The same job through the native face: alpha's API key sees it, bravo's does not.
    with auth_server.client(keys["alpha"]) as rest:
        assert rest.get(f"/v1/jobs/{job_id}").json()["jobName"] == name
    with auth_server.client(keys["bravo"]) as rest:
        assert rest.get(f"/v1/jobs/{job_id}").status_code == 404
    # An API key works as a Bedrock bearer token, for its own tenant.
    with auth_server.client(keys["alpha"]) as bearer:
        found = bearer.get(f"/model-customization-jobs/{name}")
        assert found.status_code == 200 and found.json()["jobArn"] == arn
    alpha.stop_model_customization_job(jobIdentifier=arn)
    bravo.stop_model_customization_job(jobIdentifier=bravo_arn)


def test_idempotency_tokens_are_per_tenant(auth_server: ApiServer, keys: dict[str, str]) -> None:
    body = demo_job(unique("token")) | {"clientRequestToken": unique("shared-token")}
    with auth_server.client(keys["alpha"]) as alpha, auth_server.client(keys["bravo"]) as bravo:
        first = alpha.post("/v1/jobs", json=body)
        second = bravo.post("/v1/jobs", json=body)
        again = alpha.post("/v1/jobs", json=body)
        assert (first.status_code, second.status_code, again.status_code) == (201, 201, 200)
        assert first.json()["jobId"] != second.json()["jobId"]
        assert again.json()["jobId"] == first.json()["jobId"]
        alpha.post(f"/v1/jobs/{first.json()['jobId']}/stop")
        bravo.post(f"/v1/jobs/{second.json()['jobId']}/stop")
