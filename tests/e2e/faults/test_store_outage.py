"""The object store unavailable for 10 s in the middle of training.

A loopback TCP proxy (tests/tcp_proxy.py) stands between SeaweedFS and everything else:
the API server and, through the endpoint it passes on, its trainers. Mid-training the
proxy drops every connection and refuses new ones for 10 s. Then:

- REST calls during the outage answer 503 with Retry-After, never 500; gRPC answers
  UNAVAILABLE;
- a create during the outage either fails with 503 or succeeds whole: afterwards a
  retry with the same clientRequestToken gives one job, never two, never a half one;
- the training job still ends COMPLETED, its one trainer having ridden it out (each of
  its store calls waits out an outage of up to two minutes: jobstore/storage.py), even
  when the outage lasts longer than the heartbeat timeout (silence counts from when
  the store came back).

The Bedrock face (boto3's `bedrock` client, SigV4) in an outage of its own: every call
answers ServiceUnavailableException (503, which botocore's retry modes retry) or
succeeds, never a 500; a create retried with its clientRequestToken gives one job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from botocore.exceptions import ClientError
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore
from service.server.embedded_s3 import EmbeddedS3
from tests.e2e.faults.replicas import (
    events,
    one_server,
    serving,
    tiny_dataset,
    tiny_job,
    wait_all_terminal,
)
from tests.faces.bedrock.conftest import ACCESS_KEY, REGION, SECRET_KEY, create_body, make_client
from tests.servers import ApiServer
from tests.tcp_proxy import TcpProxy

OUTAGE_SECONDS = 10.0
# Past the trainer's return after an outage (a pause of at most 2 s, then its heartbeat
# every second) with room for a loaded machine.
HEARTBEAT_TIMEOUT_SECONDS = 12


@contextmanager
def server_behind_proxy(
    s3_server: EmbeddedS3, home: Path, environment: dict[str, str] | None = None
) -> Iterator[tuple[ApiServer, TcpProxy]]:
    """One server (with `environment`) whose store, and its trainers', is the proxy's."""
    with proxied(s3_server) as proxy:
        server = one_server(
            s3_server,
            home,
            {"TUNEFORGE_S3_ENDPOINT_URL": proxy.endpoint_url, **(environment or {})},
        )
        with serving(server):
            yield server, proxy
            proxy.restore()  # before the server stops: its shutdown writes to the store


def assert_launched_once(server: ApiServer, job_id: str) -> None:
    """The trainer rode the outage out (its store calls wait), not relaunched."""
    happened = events(server, job_id)
    kinds = [event["type"] for event in happened]
    told = "\n".join(f"{event['type']}: {event.get('message', '')}" for event in happened)
    assert kinds.count("LAUNCHED") == 1 and "RETRY" not in kinds, told


@pytest.fixture
def proxied_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, TcpProxy]]:
    with server_behind_proxy(s3_server, tmp_path / "home") as served:
        yield served


@pytest.mark.timeout(600)
def test_job_completes_and_calls_answer_503_during_a_10s_store_outage(
    proxied_server: tuple[ApiServer, TcpProxy], object_store: ObjectStore
) -> None:
    server, proxy = proxied_server
    dataset = tiny_dataset(object_store, records=32)
    token = uuid.uuid4().hex
    with server.client() as client:
        created = client.post("/v1/jobs", json=tiny_job("outage", dataset, epochCount=12))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        running = server.wait_for(job_id, {"RUNNING"}, timeout=240)
        assert running["state"] == "RUNNING"

        proxy.outage()
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        rest_statuses: list[int] = []
        grpc_codes: list[grpc.StatusCode] = []
        create_during = client.post(
            "/v1/jobs", json={**tiny_job("during", dataset), "clientRequestToken": token}
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.FineTuningServiceStub(channel)
            while time.monotonic() < outage_ends - 1:
                for path in (f"/v1/jobs/{job_id}", "/v1/jobs"):
                    response = client.get(path)
                    rest_statuses.append(response.status_code)
                    if response.status_code == 503:
                        assert response.headers.get("Retry-After"), response.headers
                        assert response.json()["error"]["code"] == "UNAVAILABLE"
                try:
                    stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
                    grpc_codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    grpc_codes.append(error.code())
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        proxy.restore()

        assert 500 not in rest_statuses, rest_statuses
        assert 503 in rest_statuses, rest_statuses
        assert set(rest_statuses) <= {200, 503}, rest_statuses
        assert grpc.StatusCode.UNAVAILABLE in grpc_codes, grpc_codes
        assert set(grpc_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, grpc_codes
        assert create_during.status_code in (201, 503), create_during.text

        # The create is retried with the same token: one job, whole.
        retried = client.post(
            "/v1/jobs", json={**tiny_job("during", dataset), "clientRequestToken": token}
        )
        assert retried.status_code in (200, 201), retried.text
        retried_id = retried.json()["jobId"]
        if create_during.status_code == 201:
            assert retried_id == create_during.json()["jobId"]
        listed = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
        named_during = [job for job in listed if job["jobName"] == "during"]
        assert [job["jobId"] for job in named_during] == [retried_id], named_during
        described = client.get(f"/v1/jobs/{retried_id}")
        assert described.status_code == 200, described.text

    finished = wait_all_terminal(server, [job_id, retried_id], timeout=400)
    assert finished[job_id]["state"] == "COMPLETED", finished[job_id]
    assert finished[retried_id]["state"] == "COMPLETED", finished[retried_id]
    assert_launched_once(server, job_id)


@pytest.fixture
def impatient_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, TcpProxy]]:
    """A heartbeat timeout shorter than the outage below."""
    environment = {"TUNEFORGE_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT_SECONDS)}
    with server_behind_proxy(s3_server, tmp_path / "home", environment) as served:
        yield served


@pytest.mark.timeout(600)
def test_an_outage_longer_than_the_heartbeat_timeout_does_not_cost_the_trainer(
    impatient_server: tuple[ApiServer, TcpProxy], object_store: ObjectStore
) -> None:
    """No heartbeat can be written while the store is down, and the reconciler cannot
    read one: silence counts from when the store came back, so the trainer that rode
    the outage out is not killed as hung the moment it is over."""
    server, proxy = impatient_server
    dataset = tiny_dataset(object_store, records=32)
    with server.client() as client:
        created = client.post("/v1/jobs", json=tiny_job("long-outage", dataset, epochCount=12))
        assert created.status_code == 201, created.text
    job_id = created.json()["jobId"]
    assert server.wait_for(job_id, {"RUNNING"}, timeout=240)["state"] == "RUNNING"
    proxy.outage()
    time.sleep(HEARTBEAT_TIMEOUT_SECONDS * 2)
    proxy.restore()

    finished = wait_all_terminal(server, [job_id], timeout=400)
    assert finished[job_id]["state"] == "COMPLETED", finished[job_id]
    assert_launched_once(server, job_id)


@pytest.fixture
def proxied_bedrock_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[tuple[ApiServer, TcpProxy]]:
    """Bedrock keys enforced (SigV4); the 'trainer' is /bin/false, so no job trains."""
    environment = {
        "TUNEFORGE_BEDROCK_REGION": REGION,
        "TUNEFORGE_BEDROCK_ACCESS_KEYS": json.dumps({ACCESS_KEY: SECRET_KEY}),
        "TUNEFORGE_TRAINER_PYTHON": "/bin/false",
    }
    with server_behind_proxy(s3_server, tmp_path / "home", environment) as served:
        yield served


@contextmanager
def proxied(s3_server: EmbeddedS3) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the store, restored (so servers can stop cleanly) and
    stopped on the way out."""
    proxy = TcpProxy(s3_server.port).start()
    try:
        yield proxy
    finally:
        proxy.restore()
        proxy.stop()


@pytest.mark.timeout(300)
def test_bedrock_calls_get_service_unavailable_during_a_store_outage(
    proxied_bedrock_server: tuple[ApiServer, TcpProxy],
) -> None:
    server, proxy = proxied_bedrock_server
    # One attempt per call (make_client): every answer the server gives is seen here.
    client = make_client(server)
    body = {**create_body("bedrock-during"), "clientRequestToken": uuid.uuid4().hex}
    existing = client.create_model_customization_job(**create_body("bedrock-before"))["jobArn"]

    proxy.outage()
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    answers: list[tuple[str, int]] = []
    created_during: str | None = None
    try:
        created_during = client.create_model_customization_job(**body)["jobArn"]
        answers.append(("Created", 201))
    except ClientError as error:
        answers.append(_error_of(error))
    while time.monotonic() < outage_ends - 1:
        calls = (
            lambda: client.get_model_customization_job(jobIdentifier=existing),
            lambda: client.list_model_customization_jobs(),
            lambda: client.stop_model_customization_job(jobIdentifier=existing),
            lambda: client.list_custom_models(),
        )
        for call in calls:
            try:
                call()
                answers.append(("OK", 200))
            except ClientError as error:
                answers.append(_error_of(error))
    time.sleep(max(0.0, outage_ends - time.monotonic()))
    proxy.restore()

    statuses = {status for _, status in answers}
    assert not {s for s in statuses if s >= 500} - {503}, answers
    assert ("ServiceUnavailableException", 503) in answers, answers
    # Besides 503, only answers the store's state explains: a stop of a job that had
    # already failed (ValidationException) or was stopping (ConflictException).
    assert {code for code, _ in answers} <= {
        "OK",
        "Created",
        "ServiceUnavailableException",
        "ValidationException",
        "ConflictException",
    }, answers

    # The create is retried with the same token: one job, the same one if the first won.
    retried = client.create_model_customization_job(**body)["jobArn"]
    if created_during is not None:
        assert retried == created_during
    summaries = client.list_model_customization_jobs(nameContains="bedrock-during")
    arns = [job["jobArn"] for job in summaries["modelCustomizationJobSummaries"]]
    assert arns == [retried], summaries
    assert client.get_model_customization_job(jobIdentifier=retried)["jobArn"] == retried


def _error_of(error: ClientError) -> tuple[str, int]:
    """(the error code botocore parsed from x-amzn-ErrorType, the HTTP status)."""
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]
