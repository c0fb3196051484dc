"""REST and gRPC are two views of one core: the same scenarios through both, the same outcomes.

REST is driven with plain httpx, gRPC with the bare generated stub (not the hand-written
client, which adds request tokens and retries), both against one real server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tuneforge import Client, convert
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3
from tests.faces.rest.test_bad_input import CREATE_CASES
from tests.servers import ApiServer, demo_job

MISSING_DATA = "s3://demo/datasets/does-not-exist.jsonl"

# The REST statuses each gRPC code corresponds to.
REST_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: {400, 422},
    grpc.StatusCode.NOT_FOUND: {404},
    grpc.StatusCode.FAILED_PRECONDITION: {409},
    grpc.StatusCode.ALREADY_EXISTS: {409},
    grpc.StatusCode.UNAVAILABLE: {503},
}


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    running = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("parity"),
        state_bucket=f"parity-{uuid.uuid4().hex[:8]}",
    )
    running.start()
    yield running
    running.stop()
    running.kill_trainers()


@pytest.fixture(scope="module")
def rest(server: ApiServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: ApiServer) -> Iterator[pb_grpc.FineTuningServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FineTuningServiceStub(channel)


# -- helpers ----------------------------------------------------------------------------


def _failing_body(name: str) -> dict[str, Any]:
    """A valid request whose job fails fast in VALIDATING (cheap: no training)."""
    body = demo_job(name, epochCount=1)
    body["trainingDataConfig"]["s3Uri"] = MISSING_DATA
    return body


def _grpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        response = call(request, timeout=30)
        if not hasattr(response, "DESCRIPTOR"):
            list(response)
    return caught.value


def _outcome_rest(response: httpx.Response) -> tuple[str, str, str | None]:
    """(code, message, field) of a REST error."""
    error = response.json()["error"]
    return error["code"], error["message"], error.get("field")


def _outcome_grpc(error: grpc.RpcError) -> tuple[str, str, str | None]:
    """(code, message, field) of a gRPC error, the code being the service's (ErrorInfo)."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, error.details(), info.metadata.get("field")
    raise AssertionError("no ErrorInfo")


def _assert_same_error(response: httpx.Response, error: grpc.RpcError) -> None:
    assert response.status_code in REST_STATUS[error.code()], (response.text, error)
    assert _outcome_rest(response) == _outcome_grpc(error)


def _normalized(job: dict[str, Any]) -> dict[str, Any]:
    """A job's content with what differs between two creates (id, name, times) left out."""
    copy: dict[str, Any] = json.loads(json.dumps(job).replace(job["jobId"], "<id>"))
    for key in ("jobId", "jobName", "createdAt", "updatedAt", "clientRequestToken"):
        copy.pop(key)
    copy["stateTimes"] = sorted(copy["stateTimes"])
    return copy


def _wait_terminal(server: ApiServer, job_id: str) -> pb.Job:
    with Client(server.grpc_target) as client:
        return client.wait(job_id, timeout=120)


# -- scenarios --------------------------------------------------------------------------


def test_create(rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub) -> None:
    body = _failing_body("parity-create")
    body["tags"] = {"team": "ml", "purpose": "parity"}
    over_rest = rest.post("/v1/jobs", json=body)
    over_grpc = stub.CreateJob(convert.create_request(body), timeout=30)

    assert over_rest.status_code == 201 and over_grpc.created
    assert over_rest.headers["location"] == f"/v1/jobs/{over_rest.json()['jobId']}"
    rest_job = over_rest.json()
    grpc_job = convert.job_to_dict(over_grpc.job)
    assert rest_job["state"] == grpc_job["state"] == "QUEUED"
    assert _normalized(rest_job) == _normalized(grpc_job)
    assert rest_job["jobId"] != grpc_job["jobId"]


def test_idempotent_recreate(
    rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub, server: ApiServer
) -> None:
    body = _failing_body("parity-token")
    body["clientRequestToken"] = f"parity-{uuid.uuid4().hex}"

    first = rest.post("/v1/jobs", json=body)
    assert first.status_code == 201
    job_id = first.json()["jobId"]
    # The same token and request, through the other face: the same job, not a new one.
    again_grpc = stub.CreateJob(convert.create_request(body), timeout=30)
    again_rest = rest.post("/v1/jobs", json=body)
    assert not again_grpc.created and again_rest.status_code == 200
    assert again_grpc.job.job_id == again_rest.json()["jobId"] == job_id

    changed = dict(body, jobName="parity-token-changed")
    _assert_same_error(
        rest.post("/v1/jobs", json=changed),
        _grpc_error(stub.CreateJob, convert.create_request(changed)),
    )
    assert rest.post("/v1/jobs", json=changed).json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    listing = stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=30)
    assert sum(job.job_name.startswith("parity-token") for job in listing.jobs) == 1


def test_get(rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub, server: ApiServer) -> None:
    job_id = rest.post("/v1/jobs", json=_failing_body("parity-get")).json()["jobId"]
    _wait_terminal(server, job_id)  # a finished job no longer changes between two reads
    over_rest = rest.get(f"/v1/jobs/{job_id}")
    over_grpc = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
    assert over_rest.status_code == 200
    assert convert.job_to_dict(over_grpc) == over_rest.json()
    assert over_rest.json()["failure"]["reason"] == "DATA_VALIDATION"

    # Events, checkpoints and the log of the same job, both ways.
    events = rest.get(f"/v1/jobs/{job_id}/events").json()["events"]
    grpc_events = stub.ListJobEvents(pb.ListJobEventsRequest(job_id=job_id), timeout=30).events
    assert [convert.event_to_dict(e) for e in grpc_events] == events
    assert events[0]["type"] == "CREATED"
    checkpoints = rest.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]
    grpc_checkpoints = stub.ListCheckpoints(
        pb.ListCheckpointsRequest(job_id=job_id), timeout=30
    ).checkpoints
    assert [convert.checkpoint_to_dict(c) for c in grpc_checkpoints] == checkpoints == []
    # The trainer's last lines (after it wrote FAILED) and the reconciler's upload once it
    # saw the process end may still land: compare once the log holds still.
    deadline = time.monotonic() + 30
    while True:
        log = rest.get(f"/v1/jobs/{job_id}/logs")
        grpc_log = stub.ReadJobLog(pb.ReadJobLogRequest(job_id=job_id), timeout=30)
        if log.content == grpc_log.data == rest.get(f"/v1/jobs/{job_id}/logs").content:
            break
        assert time.monotonic() < deadline, "the log kept changing"
        time.sleep(0.5)
    assert log.content == grpc_log.data
    assert int(log.headers["x-next-offset"]) == grpc_log.next_offset
    assert int(log.headers["x-log-size"]) == grpc_log.size


def test_list_with_paging(
    rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub, server: ApiServer
) -> None:
    created = [
        rest.post("/v1/jobs", json=_failing_body(f"parity-page-{n}")).json()["jobId"]
        for n in range(3)
    ]
    for job_id in created:
        _wait_terminal(server, job_id)

    def pages_rest(**filters: str) -> list[tuple[list[str], str | None]]:
        pages, token = [], None
        while True:
            params = {"limit": 2, **filters, **({"pageToken": token} if token else {})}
            page = rest.get("/v1/jobs", params=params).json()
            token = page.get("nextPageToken")
            pages.append(([job["jobId"] for job in page["jobs"]], token))
            if not token:
                return pages

    def pages_grpc(state: int = pb.JOB_STATE_UNSPECIFIED) -> list[tuple[list[str], str | None]]:
        pages, token = [], ""
        while True:
            request = pb.ListJobsRequest(state=state, page_size=2, page_token=token)  # type: ignore[arg-type]
            page = stub.ListJobs(request, timeout=30)
            token = page.next_page_token
            pages.append(([job.job_id for job in page.jobs], token or None))
            if not token:
                return pages

    everything = pages_rest()
    assert everything == pages_grpc()
    assert len(everything) >= 2, "paging not exercised"
    seen = [job_id for ids, _ in everything for job_id in ids]
    assert seen == sorted(seen), "not newest first"  # ids sort newest first
    assert seen[: len(created)] == list(reversed(created))

    failed = pages_rest(status="FAILED")
    assert failed == pages_grpc(pb.FAILED)
    assert set(created) <= {job_id for ids, _ in failed for job_id in ids}

    # A page of jobs is the same content both ways.
    rest_page = rest.get("/v1/jobs", params={"limit": 3, "status": "FAILED"}).json()["jobs"]
    grpc_page = stub.ListJobs(pb.ListJobsRequest(state=pb.FAILED, page_size=3), timeout=30).jobs
    assert [convert.job_to_dict(job) for job in grpc_page] == rest_page

    _assert_same_error(
        rest.get("/v1/jobs", params={"pageToken": "garbage"}),
        _grpc_error(stub.ListJobs, pb.ListJobsRequest(page_token="garbage")),
    )
    too_big_rest = rest.get("/v1/jobs", params={"limit": 1000})
    too_big_grpc = _grpc_error(stub.ListJobs, pb.ListJobsRequest(page_size=1000))
    assert too_big_rest.status_code == 422
    assert too_big_grpc.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The page size is `limit` in REST's query and `page_size` in the proto: each names its own.
    assert _outcome_rest(too_big_rest)[2] == "limit"
    assert _outcome_grpc(too_big_grpc)[2] == "pageSize"


def test_stop(rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub, server: ApiServer) -> None:
    job_id = rest.post("/v1/jobs", json=demo_job("parity-stop", epochCount=100)).json()["jobId"]
    # Stop a RUNNING job: its trainer takes a checkpoint's time to stop, so the second stop
    # finds it STOPPING. (A job stopped while QUEUED can be STOPPED before the second call.)
    server.wait_for(job_id, {"RUNNING"})
    over_rest = rest.post(f"/v1/jobs/{job_id}/stop")
    over_grpc = stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=30)  # again: no error
    assert over_rest.status_code == 202
    assert over_rest.json()["state"] == convert.state_name(over_grpc.state) == "STOPPING"
    assert over_rest.json()["stopRequested"] and over_grpc.stop_requested

    assert _wait_terminal(server, job_id).state == pb.STOPPED
    _assert_same_error(
        rest.post(f"/v1/jobs/{job_id}/stop"),
        _grpc_error(stub.StopJob, pb.StopJobRequest(job_id=job_id)),
    )
    assert "already STOPPED" in rest.post(f"/v1/jobs/{job_id}/stop").json()["error"]["message"]


@pytest.mark.parametrize("job_id", ["0000000000000000", "not-a-job-id"])
@pytest.mark.parametrize(
    ("method", "path", "call", "request_type"),
    [
        ("GET", "", "GetJob", pb.GetJobRequest),
        ("POST", "/stop", "StopJob", pb.StopJobRequest),
        ("GET", "/events", "ListJobEvents", pb.ListJobEventsRequest),
        ("GET", "/checkpoints", "ListCheckpoints", pb.ListCheckpointsRequest),
        ("GET", "/logs", "ReadJobLog", pb.ReadJobLogRequest),
    ],
    ids=["get", "stop", "events", "checkpoints", "logs"],
)
def test_not_found(
    rest: httpx.Client,
    stub: pb_grpc.FineTuningServiceStub,
    job_id: str,
    method: str,
    path: str,
    call: str,
    request_type: Any,
) -> None:
    response = rest.request(method, f"/v1/jobs/{job_id}{path}")
    error = _grpc_error(getattr(stub, call), request_type(job_id=job_id))
    assert response.status_code == 404 and error.code() == grpc.StatusCode.NOT_FOUND
    _assert_same_error(response, error)


REPRESENTABLE = []
for _name, _body, _status, _field in CREATE_CASES:
    try:
        convert.create_request(_body)
    except ValueError:
        continue  # not expressible as a CreateJobRequest (a string for a number, ...)
    REPRESENTABLE.append((_name, _body, _field))


def test_most_bad_input_cases_are_expressible_in_proto() -> None:
    assert len(REPRESENTABLE) >= 15, [case[0] for case in REPRESENTABLE]


@pytest.mark.parametrize(
    ("name", "body", "field"), REPRESENTABLE, ids=[case[0] for case in REPRESENTABLE]
)
def test_invalid_input(
    rest: httpx.Client, stub: pb_grpc.FineTuningServiceStub, name: str, body: Any, field: str
) -> None:
    response = rest.post("/v1/jobs", json=body)
    error = _grpc_error(stub.CreateJob, convert.create_request(body))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_same_error(response, error)
    assert _outcome_grpc(error)[2] == field
