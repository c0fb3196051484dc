"""Per-tenant limits: running trainers, queued jobs, requests per second, on each face.

Limits of the `auth_server` (tests/service/auth/conftest.py): tenant "queue" runs 1 trainer at a
time and may have 2 jobs waiting; tenant "slow" may send 1 request per second in
bursts of 3. Trainers there sleep until stopped, so a launched job holds its slot.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from tests.servers import ApiServer, demo_job
from tests.service.auth.conftest import unique


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)


def test_tenant_running_and_queued_job_limits(auth_server: ApiServer) -> None:
    key = auth_server.create_api_key("queue")
    other = auth_server.create_api_key(unique("neighbour"))
    with auth_server.client(key) as rest, auth_server.client(other) as neighbour:
        first = rest.post("/v1/jobs", json=demo_job(unique("q1"))).json()["jobId"]
        # Launched (attempt 1): it holds the tenant's one trainer.
        _wait(lambda: rest.get(f"/v1/jobs/{first}").json()["attempt"] == 1)
        waiting = [rest.post("/v1/jobs", json=demo_job(unique("q"))).json()["jobId"] for _ in "ab"]

        # The third waiting job is refused before anything is written.
        before = len(rest.get("/v1/jobs", params={"limit": 100}).json()["jobs"])
        refused = rest.post("/v1/jobs", json=demo_job(unique("q-over")))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert "2 jobs waiting in the queue" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(rest.get("/v1/jobs", params={"limit": 100}).json()["jobs"]) == before

        # The tenant's extra jobs stay QUEUED with their place, although the launcher has
        # free slots: another tenant's job starts at once.
        time.sleep(2)  # several reconcile passes
        for position, job_id in enumerate(waiting, start=1):
            job = rest.get(f"/v1/jobs/{job_id}").json()
            assert job["state"] == "QUEUED" and job["attempt"] == 0
            assert job["queuePosition"] == position
        theirs = neighbour.post("/v1/jobs", json=demo_job(unique("n"))).json()["jobId"]
        _wait(lambda: neighbour.get(f"/v1/jobs/{theirs}").json()["attempt"] == 1)

        # gRPC refuses the same create with RESOURCE_EXHAUSTED.
        with grpc.insecure_channel(auth_server.grpc_target) as channel:
            stub = pb_grpc.FineTuningServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateJob(
                    pb.CreateJobRequest(
                        job_name=unique("q-grpc"),
                        base_model_identifier="s3://demo/models/tiny-llama/",
                        training_data_config=pb.DataConfig(
                            s3_uri="s3://demo/datasets/sample-train.jsonl"
                        ),
                        output_data_config=pb.DataConfig(s3_uri="s3://demo/output/"),
                    ),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=30,
                )
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # When the running job ends, the first waiting one takes its slot.
        assert rest.post(f"/v1/jobs/{first}/stop").status_code == 202
        _wait(lambda: rest.get(f"/v1/jobs/{waiting[0]}").json()["attempt"] == 1)
        for job_id in [*waiting]:
            rest.post(f"/v1/jobs/{job_id}/stop")
        neighbour.post(f"/v1/jobs/{theirs}/stop")


def test_requests_per_second_limit_on_every_face(auth_server: ApiServer) -> None:
    key = auth_server.create_api_key("slow")  # 1 request/s, bursts of 3
    with auth_server.client(key) as rest:
        answers = [rest.get("/v1/jobs") for _ in range(8)]
        statuses = [answer.status_code for answer in answers]
        assert 200 in statuses and 429 in statuses, statuses
        throttled = next(answer for answer in answers if answer.status_code == 429)
        assert throttled.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert int(throttled.headers["Retry-After"]) >= 1
        time.sleep(1.5)  # the bucket refills at 1 request/s
        assert rest.get("/v1/jobs").status_code == 200

    time.sleep(3.5)  # a full bucket again
    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        codes = []
        for _ in range(8):
            try:
                stub.ListJobs(
                    pb.ListJobsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=30
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                last = error
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        status = rpc_status.from_call(last)
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry, "RESOURCE_EXHAUSTED carries a RetryInfo hint"
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert info.retry_delay.seconds >= 1

    time.sleep(3.5)
    with auth_server.client() as http:
        bearer = {"Authorization": f"Bearer {key}"}
        answers = [http.get("/model-customization-jobs", headers=bearer) for _ in range(8)]
        throttled_types = {
            a.headers.get("x-amzn-ErrorType") for a in answers if a.status_code == 429
        }
        assert throttled_types == {"ThrottlingException"}, [a.status_code for a in answers]
