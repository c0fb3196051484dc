"""gRPC error mapping: each domain error gets its status code and rich google.rpc details."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from tuneforge import Client, convert
from tuneforge import errors as client_errors
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer, demo_job

UNKNOWN_ID = "0000000000000000"


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    running = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("grpc-errors"),
        state_bucket=f"grpc-errors-{uuid.uuid4().hex[:8]}",
    )
    running.start()
    yield running
    running.stop()
    running.kill_trainers()


@pytest.fixture(scope="module")
def stub(server: ApiServer) -> Iterator[pb_grpc.FineTuningServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FineTuningServiceStub(channel)


def _fails(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        response = call(request, timeout=60)
        if not hasattr(response, "DESCRIPTOR"):  # a stream: errors come while reading it
            list(response)
    return caught.value


def _details(error: grpc.RpcError) -> tuple[status_pb2.Status, dict[str, Any]]:
    """The google.rpc.Status the server sent and its details, unpacked, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    unpacked: dict[str, Any] = {}
    kinds = (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.ResourceInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.RetryInfo,
    )
    for detail in status.details:
        assert isinstance(detail, any_pb2.Any)
        for kind in kinds:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked[kind.DESCRIPTOR.name] = message
    assert "ErrorInfo" in unpacked, "every error carries an ErrorInfo"
    assert unpacked["ErrorInfo"].domain == "tuneforge"
    return status, unpacked


def _request(**hyper: Any) -> pb.CreateJobRequest:
    return convert.create_request(demo_job("errors", **hyper))


def test_bad_hyperparameter_is_invalid_argument_naming_the_field(
    stub: pb_grpc.FineTuningServiceStub,
) -> None:
    error = _fails(stub.CreateJob, _request(learningRate=2.0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hyperParameters.learningRate" in error.details()
    _, details = _details(error)
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert details["ErrorInfo"].metadata["field"] == "hyperParameters.learningRate"
    violations = details["BadRequest"].field_violations
    assert [v.field for v in violations] == ["hyperParameters.learningRate"]
    assert "less than or equal to 1" in violations[0].description


def test_every_bad_field_is_a_violation(stub: pb_grpc.FineTuningServiceStub) -> None:
    request = _request(epochCount=0)
    request.job_name = "bad name!"
    request.training_data_config.s3_uri = "http://example.com/train.jsonl"
    error = _fails(stub.CreateJob, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, details = _details(error)
    fields = {v.field for v in details["BadRequest"].field_violations}
    assert fields == {"jobName", "trainingDataConfig.s3Uri", "hyperParameters.epochCount"}


def test_missing_required_fields_are_named(stub: pb_grpc.FineTuningServiceStub) -> None:
    error = _fails(stub.CreateJob, pb.CreateJobRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, details = _details(error)
    violations = {v.field: v.description for v in details["BadRequest"].field_violations}
    for field in ("jobName", "baseModelIdentifier", "trainingDataConfig", "outputDataConfig"):
        assert violations.get(field) == "Field required", violations


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("ListJobs", pb.ListJobsRequest(page_token="garbage"), "pageToken"),
        ("ListJobs", pb.ListJobsRequest(page_size=1000), "pageSize"),
        ("ListJobs", pb.ListJobsRequest(page_size=-1), "pageSize"),
        ("ListJobs", pb.ListJobsRequest(state=99), "state"),  # type: ignore[arg-type]
        ("ReadJobLog", pb.ReadJobLogRequest(job_id=UNKNOWN_ID, max_bytes=10**8), "maxBytes"),
    ],
    ids=["page token", "page size too big", "page size negative", "unknown state", "max bytes"],
)
def test_bad_read_arguments_are_invalid_argument(
    stub: pb_grpc.FineTuningServiceStub, call: str, request_: Any, field: str
) -> None:
    error = _fails(getattr(stub, call), request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, details = _details(error)
    assert details["ErrorInfo"].metadata["field"] == field
    assert [v.field for v in details["BadRequest"].field_violations] == [field]


@pytest.mark.parametrize("job_id", [UNKNOWN_ID, "not-a-job-id", "../../etc/passwd", ""])
@pytest.mark.parametrize(
    ("call", "request_type"),
    [
        ("GetJob", pb.GetJobRequest),
        ("StopJob", pb.StopJobRequest),
        ("PauseJob", pb.PauseJobRequest),
        ("ResumeJob", pb.ResumeJobRequest),
        ("WatchJob", pb.WatchJobRequest),
        ("ListJobEvents", pb.ListJobEventsRequest),
        ("ListCheckpoints", pb.ListCheckpointsRequest),
        ("ReadJobLog", pb.ReadJobLogRequest),
    ],
)
def test_unknown_job_is_not_found(
    stub: pb_grpc.FineTuningServiceStub, call: str, request_type: Any, job_id: str
) -> None:
    error = _fails(getattr(stub, call), request_type(job_id=job_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"no job with id '{job_id}'"
    _, details = _details(error)
    assert details["ErrorInfo"].reason == "NOT_FOUND"
    assert details["ErrorInfo"].metadata["field"] == "jobId"
    assert details["ResourceInfo"].resource_type == "tuneforge.v1.Job"
    assert details["ResourceInfo"].resource_name == job_id


def test_stopping_a_finished_job_is_failed_precondition(
    server: ApiServer, stub: pb_grpc.FineTuningServiceStub
) -> None:
    request = _request()
    request.training_data_config.s3_uri = "s3://demo/datasets/does-not-exist.jsonl"
    job_id = stub.CreateJob(request, timeout=30).job.job_id
    with Client(server.grpc_target) as client:
        final = client.wait(job_id, timeout=120)
    assert final.state == pb.FAILED
    assert final.failure.reason == pb.DATA_VALIDATION

    error = _fails(stub.StopJob, pb.StopJobRequest(job_id=job_id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already FAILED" in error.details()
    _, details = _details(error)
    assert details["ErrorInfo"].reason == "FAILED_PRECONDITION"
    (violation,) = details["PreconditionFailure"].violations
    assert violation.type == "JOB_STATE" and "already FAILED" in violation.description


def test_token_reused_for_another_request_is_already_exists(
    stub: pb_grpc.FineTuningServiceStub,
) -> None:
    request = _request()
    request.training_data_config.s3_uri = "s3://demo/datasets/does-not-exist.jsonl"
    request.client_request_token = f"token-{uuid.uuid4().hex}"
    first = stub.CreateJob(request, timeout=30)
    again = stub.CreateJob(request, timeout=30)
    assert first.created and not again.created
    assert again.job.job_id == first.job.job_id

    request.job_name = "another-name"
    error = _fails(stub.CreateJob, request)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.job.job_id in error.details()
    _, details = _details(error)
    assert details["ErrorInfo"].reason == "IDEMPOTENCY_CONFLICT"
    assert details["ErrorInfo"].metadata["field"] == "clientRequestToken"


def test_store_down_is_unavailable(demo_assets: None, tmp_path: Path) -> None:
    """A server whose object store dies answers UNAVAILABLE (with RetryInfo) and its
    health check turns NOT_SERVING."""
    store = EmbeddedS3(
        tmp_path / "s3",
        port=free_port(),
        access_key_id="down-key",
        secret_access_key="down-secret-0123456789",
        log_path=tmp_path / "weed.log",
    )
    store.start()
    server = ApiServer(store, tmp_path / "home", state_bucket="down")
    try:
        server.start()
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.FineTuningServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            serving = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert serving.status == health_pb2.HealthCheckResponse.SERVING

            store.stop()
            error = _fails(stub.GetJob, pb.GetJobRequest(job_id=UNKNOWN_ID))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "object store" in error.details()
            _, details = _details(error)
            assert details["ErrorInfo"].reason == "UNAVAILABLE"
            assert details["RetryInfo"].retry_delay.seconds == 5

            with (
                Client(server.grpc_target, max_attempts=2, backoff=0.1) as client,
                pytest.raises(client_errors.Unavailable) as caught,
            ):
                client.list_jobs()
            assert caught.value.reason == "UNAVAILABLE"

            deadline = time.monotonic() + 60
            status = serving.status
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.5)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.kill()
        store.stop()
