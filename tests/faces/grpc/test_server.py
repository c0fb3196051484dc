"""The gRPC server itself: health checking, reflection, graceful shutdown."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from tests.servers import ApiServer, demo_job

SERVICE = "tuneforge.v1.FineTuningService"


def test_health_checking_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_service(channel: grpc.Channel) -> None:
    """What grpcurl does: learn the API from the server alone, then call it."""
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services

    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    assert {method.name for method in service.methods} == {
        "CreateJob",
        "GetJob",
        "ListJobs",
        "StopJob",
        "PauseJob",
        "ResumeJob",
        "WatchJob",
        "ListJobEvents",
        "ListCheckpoints",
        "ReadJobLog",
    }
    assert service.methods_by_name["WatchJob"].server_streaming
    hyper = pool.FindMessageTypeByName("tuneforge.v1.HyperParameters")
    assert "learning_rate" in hyper.fields_by_name

    request_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tuneforge.v1.GetJobRequest")
    )
    response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("tuneforge.v1.Job"))
    get_job = channel.unary_unary(
        f"/{SERVICE}/GetJob",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        get_job(request_class(job_id="0000000000000000"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_shutdown_finishes_calls_in_flight_and_ends_watches(
    api_server: ApiServer, stub: pb_grpc.FineTuningServiceStub, object_store: ObjectStore
) -> None:
    """SIGTERM: calls the server has started complete, open watches end UNAVAILABLE (call
    again elsewhere), later calls are refused, and the process exits 0.

    Creates are the probe: each has a side effect (a job), so a create that the server
    started but cut short would leave a job behind without having answered OK.
    """
    job_id = stub.CreateJob(
        convert.create_request(demo_job("shutdown", epochCount=100)), timeout=30
    ).job.job_id
    watch = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120)
    first = next(watch)
    assert first.job.job_id == job_id and not convert.is_terminal(first.job)

    outcomes: dict[str, grpc.StatusCode] = {}
    lock = threading.Lock()

    def keep_creating(worker: int) -> None:
        for number in range(200):
            token = f"shutdown-{worker}-{number}"
            body = demo_job(f"shutdown-{worker}-{number}", epochCount=1)
            body["trainingDataConfig"]["s3Uri"] = "s3://demo/datasets/does-not-exist.jsonl"
            body["clientRequestToken"] = token
            try:
                stub.CreateJob(convert.create_request(body), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            with lock:
                outcomes[token] = code
            if code != grpc.StatusCode.OK:
                return  # refused: the server is going away

    assert api_server.process is not None
    with ThreadPoolExecutor(4) as pool:
        for worker in range(4):
            pool.submit(keep_creating, worker)
        time.sleep(0.1)
        api_server.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in watch:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in ended.value.details()
        returncode = api_server.process.wait(30)
    assert returncode == 0, api_server.log_path.read_text()[-3000:]
    assert "gRPC API stopped" in api_server.log_path.read_text()

    answered = {token for token, code in outcomes.items() if code == grpc.StatusCode.OK}
    assert answered, "no create completed before the shutdown"
    # Refused calls either never reached the server (UNAVAILABLE) or were dropped by it
    # before they started (CANCELLED); neither made anything.
    refused = set(outcomes.values()) - {grpc.StatusCode.OK}
    assert refused <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, refused
    store = JobStore(object_store, api_server.state_bucket)
    made = {
        store.get_spec(found).clientRequestToken
        for found in store.list_job_ids(after=None, limit=1000)
        if found != job_id
    }
    assert made == answered, f"cut short: {made - answered}; lost: {answered - made}"
