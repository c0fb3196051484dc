"""`Client` (gRPC) and `RestClient` (REST): the same methods, answers and errors.

Also the gRPC client's resilience: calls retried on UNAVAILABLE, and a watch that goes
on across a restart of the server.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from tuneforge import (
    AlreadyExists,
    Client,
    InvalidArgument,
    NotFound,
    RestClient,
    Unavailable,
    convert,
)
from tuneforge.v1 import fine_tuning_pb2 as pb

from service.server.embedded_s3 import free_port
from tests.servers import ApiServer, demo_job


def _failing_job(name: str) -> dict[str, Any]:
    body = demo_job(name, epochCount=1)
    body["trainingDataConfig"]["s3Uri"] = "s3://demo/datasets/does-not-exist.jsonl"
    return body


def test_rest_and_grpc_clients_agree(api_server: ApiServer) -> None:
    with Client(api_server.grpc_target) as grpc_client, RestClient(api_server.url) as rest_client:
        created = rest_client.create_job(_failing_job("sdk"))
        assert created.created and created.job.state == pb.QUEUED
        assert created.job.HasField("client_request_token")  # made up, so retries are safe
        job_id = created.job.job_id

        final = rest_client.wait(job_id, timeout=120)
        assert final.state == pb.FAILED and final.failure.reason == pb.DATA_VALIDATION
        assert grpc_client.get_job(job_id) == rest_client.get_job(job_id) == final
        assert grpc_client.list_job_events(job_id) == rest_client.list_job_events(job_id)
        assert grpc_client.list_checkpoints(job_id) == rest_client.list_checkpoints(job_id)
        assert grpc_client.read_job_log(job_id) == rest_client.read_job_log(job_id)
        assert [j.job_id for j in grpc_client.iter_jobs(page_size=1)] == [
            j.job_id for j in rest_client.iter_jobs(page_size=1)
        ]
        assert grpc_client.list_jobs(state="FAILED") == rest_client.list_jobs(state="FAILED")

        # The same request token through the other client: the same job.
        request = convert.create_request(_failing_job("sdk"))
        request.client_request_token = created.job.client_request_token
        again = grpc_client.create_job(request)
        assert not again.created and again.job.job_id == job_id
        request.job_name = "sdk-changed"
        for client in (grpc_client, rest_client):
            with pytest.raises(AlreadyExists) as conflict:
                client.create_job(request)
            assert conflict.value.reason == "IDEMPOTENCY_CONFLICT"
            assert conflict.value.field == "clientRequestToken"

            with pytest.raises(NotFound) as missing:
                client.get_job("0000000000000000")
            assert missing.value.field == "jobId"
            assert (
                str(missing.value) == "NOT_FOUND: no job with id '0000000000000000' (field jobId)"
            )

            with pytest.raises(InvalidArgument) as invalid:
                client.create_job(demo_job("sdk", learningRate=-1.0, epochCount=0))
            assert {field for field, _ in invalid.value.violations} == {
                "hyperParameters.learningRate",
                "hyperParameters.epochCount",
            }

        # A body that does not fit the message fails before anything is sent.
        with pytest.raises(ValueError, match="speed"):
            grpc_client.create_job({"jobName": "x", "hyperParameters": {"speed": 1}})


def test_unreachable_server_is_unavailable() -> None:
    port = free_port()
    with (
        Client(f"127.0.0.1:{port}", max_attempts=2, backoff=0.05) as client,
        pytest.raises(Unavailable),
    ):
        client.get_job("0000000000000000")
    with (
        RestClient(f"http://127.0.0.1:{port}", max_attempts=2, backoff=0.05) as rest,
        pytest.raises(Unavailable),
    ):
        rest.get_job("0000000000000000")


def test_calls_and_watches_survive_a_server_restart(api_server: ApiServer) -> None:
    """UNAVAILABLE while the server restarts: calls are retried, a watch reopens."""
    # Enough retries to span a server start on a loaded 2-core machine (~40 s).
    client = Client(api_server.grpc_target, max_attempts=45, backoff=0.2, max_backoff=1.0)
    job_id = client.create_job(_failing_job("restart")).job.job_id
    updates: list[pb.Job] = []
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            for job in client.watch(job_id, timeout=180):
                updates.append(job)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    while not updates and watcher.is_alive():
        watcher.join(0.1)
    api_server.kill()  # the watch's stream breaks: UNAVAILABLE
    before_the_cut = list(updates)

    restarted = ApiServer(
        api_server.s3, api_server.home, state_bucket=api_server.state_bucket, port=api_server.port
    )
    restarted.grpc_port = api_server.grpc_port
    starting = threading.Thread(target=restarted.start)
    starting.start()
    try:
        # Issued while the server is down: retried until the new one answers.
        assert client.get_job(job_id).job_id == job_id
        watcher.join(180)
        assert not failures, failures
        assert updates and convert.is_terminal(updates[-1])
        assert updates[-1].state == pb.FAILED
        # The end was seen through the restarted server: the watch reopened its stream.
        assert not any(convert.is_terminal(job) for job in before_the_cut)
        # ... and did not repeat what it had already yielded.
        assert not any(convert.same_view(a, b) for a, b in itertools.pairwise(updates))
    finally:
        starting.join(60)
        restarted.stop()
        restarted.kill_trainers()
        client.close()
