"""Metrics, structured logs, paginated events, the SSE stream and webhooks, on one real
API server (tests/service/observability/conftest.py) running one real training job.

`observed_run` creates the job and, while it runs, follows it the ways a user would:
an SSE stream (httpx, in a thread), /metrics scrapes, gRPC and Bedrock calls. The tests
then check what each of those saw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc
import httpx
import pytest
from botocore.config import Config
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.webhooks.delivery import SIGNATURE_HEADER, verify_signature
from tests.conftest import SECRET_KEY as S3_SECRET
from tests.prometheus_text import samples
from tests.servers import TERMINAL, ApiServer, demo_job
from tests.service.observability.conftest import (
    BEDROCK_ACCESS_KEY,
    BEDROCK_BEARER_TOKEN,
    BEDROCK_SECRET,
    WEBHOOK_SECRET,
    WebhookReceiver,
)

REQUEST_ID = "observability-test-request-0001"


def read_sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events: one dict per message (event, id, data); comments too."""
    message: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if message:
                yield message
            message = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(":")
            message[key] = value.removeprefix(" ")


@dataclass
class ObservedRun:
    job_id: str
    final: dict[str, Any]
    webhook_path: str
    stream: list[dict[str, Any]] = field(default_factory=list)
    stream_error: list[BaseException] = field(default_factory=list)
    steps_seen: list[float] = field(default_factory=list)
    metrics_while_running: str = ""
    metrics_after: str = ""


def _follow_stream(server: ApiServer, job_id: str, run: ObservedRun) -> None:
    try:
        with (
            httpx.Client(base_url=server.url, timeout=httpx.Timeout(30, read=120)) as client,
            client.stream("GET", f"/v1/jobs/{job_id}/stream") as response,
        ):
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for message in read_sse(response):
                run.stream.append(message)
    except BaseException as error:  # reported by the test that checks the stream
        run.stream_error.append(error)


@pytest.fixture(scope="module")
def observed_run(
    observed_server: ApiServer, webhook_receiver: WebhookReceiver
) -> Iterator[ObservedRun]:
    server = observed_server
    body = demo_job("observed", epochCount=2)
    webhook_path = "/hooks/observed"
    body["notifications"] = {"webhookUrl": webhook_receiver.url(webhook_path)}
    with server.client() as client:
        created = client.post("/v1/jobs", json=body, headers={"X-Request-Id": REQUEST_ID})
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        run = ObservedRun(job_id=job_id, final={}, webhook_path=webhook_path)
        follower = threading.Thread(target=_follow_stream, args=(server, job_id, run))
        follower.start()

        # The other faces, so each has requests to count.
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.FineTuningServiceStub(channel)
            stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
        bedrock = boto3.client(
            "bedrock",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=BEDROCK_ACCESS_KEY,
            aws_secret_access_key=BEDROCK_SECRET,
            config=Config(retries={"max_attempts": 1}),
        )
        bedrock.list_model_customization_jobs()

        deadline = time.monotonic() + 300
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in TERMINAL:
                break
            scraped = client.get("/metrics").text
            steps = samples(scraped, "tuneforge_job_step", job_id=job_id)
            if steps:
                run.steps_seen.append(steps[0])
                run.metrics_while_running = scraped
            time.sleep(0.5)
        run.final = job
        follower.join(timeout=60)
        # A reconcile pass or two after the end: the job's series are gone.
        time.sleep(2)
        run.metrics_after = client.get("/metrics").text
    yield run


def test_job_completes(observed_run: ObservedRun) -> None:
    assert observed_run.final["state"] == "COMPLETED", observed_run.final


def test_metrics_show_the_running_jobs_step_gauge_move(observed_run: ObservedRun) -> None:
    steps = observed_run.steps_seen
    assert len(set(steps)) >= 2, f"step gauge did not move: {steps}"
    assert steps == sorted(steps)
    text = observed_run.metrics_while_running
    job = {"job_id": observed_run.job_id, "tenant": "default"}
    assert samples(text, "tuneforge_job_total_steps", **job)
    assert samples(text, "tuneforge_job_learning_rate", **job)[0] > 0
    assert samples(text, "tuneforge_job_training_loss", **job)
    assert samples(text, "tuneforge_job_tokens_per_second", **job)[0] > 0
    assert not samples(text, "tuneforge_job_gpu_memory_bytes", **job)  # no GPU here
    assert samples(text, "tuneforge_jobs", state="RUNNING")[0] >= 1
    assert samples(text, "tuneforge_reconcile_duration_seconds_count")[0] > 0


def test_metrics_drop_a_finished_jobs_series(observed_run: ObservedRun) -> None:
    assert not samples(observed_run.metrics_after, "tuneforge_job_step", job_id=observed_run.job_id)


def test_request_counters_and_latency_histograms_per_face(
    observed_server: ApiServer, observed_run: ObservedRun
) -> None:
    before = samples(
        observed_run.metrics_after,
        "tuneforge_requests_total",
        face="rest",
        operation="GET /v1/jobs/{job_id}",
        code="200",
    )[0]
    with observed_server.client() as client:
        client.get(f"/v1/jobs/{observed_run.job_id}")
        client.get("/v1/jobs/no-such-job-here")
        text = client.get("/metrics").text
    rest_gets = samples(
        text,
        "tuneforge_requests_total",
        face="rest",
        operation="GET /v1/jobs/{job_id}",
        code="200",
    )
    assert rest_gets[0] >= before + 1
    # Route templates, never raw paths: no job id in any operation label.
    operations = {
        sample.labels.get("operation", "")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert not any(observed_run.job_id in operation for operation in operations)
    for face, operation in (
        ("rest", "GET /v1/jobs/{job_id}"),
        ("grpc", "GetJob"),
        ("bedrock", "GET /model-customization-jobs"),
    ):
        counts = samples(
            text, "tuneforge_request_duration_seconds_count", face=face, operation=operation
        )
        assert counts and counts[0] >= 1, f"no latency histogram for {face} {operation}"
    assert samples(text, "tuneforge_store_request_duration_seconds_count", operation="GetObject")


def _log_lines(server: ApiServer) -> list[dict[str, Any]]:
    """The server's log lines (its start-up banner printed to stdout aside)."""
    lines = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # raises if a log line is not JSON
    return lines


def test_logs_are_json_lines_with_job_and_request_ids(
    observed_server: ApiServer, observed_run: ObservedRun
) -> None:
    # Besides JSON lines there is only the start-up banner main() prints (addresses):
    # nothing shaped like a plain-text log line, no bare traceback.
    raw = observed_server.log_path.read_text().splitlines()
    not_json = [line for line in raw if line and not line.startswith("{")]
    plain_log = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b|^Traceback|^\s+File ")
    assert not [line for line in not_json if plain_log.search(line)], not_json[:5]
    assert len(not_json) <= 10, not_json
    lines = _log_lines(observed_server)
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)

    about_job = [line for line in lines if line.get("job_id") == observed_run.job_id]
    assert about_job, "no log line carries the job id"
    assert all("tenant" in line and "attempt" in line for line in about_job)
    launched = [line for line in about_job if "started trainer" in line["event"]]
    assert launched and launched[0]["attempt"] == 1 and launched[0]["tenant"] == "default"

    # The caller's request id is on its access line and on the store calls it made.
    mine = [line for line in lines if line.get("request_id") == REQUEST_ID]
    assert any(line["event"] == "request" and line["status"] == 201 for line in mine)
    assert any(line["event"] == "store call" and line["operation"] == "PutObject" for line in mine)


def test_request_id_is_returned_or_generated(observed_server: ApiServer) -> None:
    with observed_server.client() as client:
        echoed = client.get("/healthz", headers={"X-Request-Id": "caller-chosen-id"})
        generated = client.get("/healthz")
        forged = client.get("/healthz", headers={"X-Request-Id": 'bad"id\\n{}'})
    assert echoed.headers["x-request-id"] == "caller-chosen-id"
    assert len(generated.headers["x-request-id"]) == 32
    assert forged.headers["x-request-id"] != 'bad"id\\n{}'
    with grpc.insecure_channel(observed_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        call = stub.ListJobs.with_call(
            pb.ListJobsRequest(page_size=1),
            metadata=(("x-request-id", "grpc-caller-id"),),
            timeout=30,
        )
        assert ("x-request-id", "grpc-caller-id") in call[1].initial_metadata()


def test_no_configured_secret_appears_in_the_logs(
    observed_server: ApiServer, observed_run: ObservedRun
) -> None:
    # Requests that carry secrets: a Bedrock bearer token, a SigV4 signature.
    with observed_server.client() as client:
        client.get(
            "/model-customization-jobs",
            headers={"Authorization": f"Bearer {BEDROCK_BEARER_TOKEN}"},
        )
    server_log = observed_server.log_path.read_text()
    trainer_logs = [
        path.read_text() for path in (observed_server.home / "work").rglob("trainer.log")
    ]
    assert trainer_logs, "the job's trainer log is missing"
    for secret in (S3_SECRET, BEDROCK_SECRET, BEDROCK_BEARER_TOKEN, WEBHOOK_SECRET):
        assert secret not in server_log
        for log in trainer_logs:
            assert secret not in log


def test_sse_stream_delivers_progress_then_the_terminal_state_and_ends(
    observed_run: ObservedRun,
) -> None:
    assert not observed_run.stream_error, observed_run.stream_error
    messages = [m for m in observed_run.stream if "comment" not in m]
    assert all(m["event"] == "job" for m in messages)
    jobs = [json.loads(m["data"]) for m in messages]
    assert [int(m["id"]) for m in messages] == list(range(1, len(messages) + 1))
    assert jobs[0]["jobId"] == observed_run.job_id
    steps = [job["progress"]["step"] for job in jobs if job["state"] == "RUNNING"]
    assert len(set(steps)) >= 2, f"no progress in the stream: {steps}"
    assert jobs[-1]["state"] == "COMPLETED"
    assert all(job["state"] not in TERMINAL for job in jobs[:-1])


def test_sse_stream_of_a_finished_job_resumes_numbering_and_ends(
    observed_server: ApiServer, observed_run: ObservedRun
) -> None:
    with (
        httpx.Client(base_url=observed_server.url, timeout=30) as client,
        client.stream(
            "GET", f"/v1/jobs/{observed_run.job_id}/stream", headers={"Last-Event-ID": "41"}
        ) as response,
    ):
        messages = list(read_sse(response))
    assert [m["id"] for m in messages] == ["42"]
    assert json.loads(messages[0]["data"])["state"] == "COMPLETED"
    with httpx.Client(base_url=observed_server.url, timeout=30) as client:
        assert client.get("/v1/jobs/0000000000000000/stream").status_code == 404


def _cli_events(server: ApiServer, job_id: str, page_size: int) -> list[dict[str, Any]]:
    script = Path(sys.executable).parent / "tuneforge"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tuneforge"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    environment["TUNEFORGE_ENDPOINT"] = server.grpc_target
    done = subprocess.run(
        [*command, "-o", "json", "jobs", "events", job_id, "--page-size", str(page_size)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    events: list[dict[str, Any]] = json.loads(done.stdout)["events"]
    return events


def test_events_come_in_order_across_pages_on_rest_grpc_and_cli(
    observed_server: ApiServer, observed_run: ObservedRun
) -> None:
    job_id = observed_run.job_id
    with observed_server.client() as client:
        everything = client.get(f"/v1/jobs/{job_id}/events", params={"pageSize": 1000}).json()
        assert everything["nextPageToken"] is None
        pages, token = [], None
        while True:
            params: dict[str, Any] = {"pageSize": 2}
            if token:
                params["pageToken"] = token
            page = client.get(f"/v1/jobs/{job_id}/events", params=params).json()
            pages.append(page["events"])
            token = page.get("nextPageToken")
            if not token:
                break
        bad = client.get(f"/v1/jobs/{job_id}/events", params={"pageToken": "not-a-token"})
    events = everything["events"]
    sequences = [event["sequence"] for event in events]
    assert sequences == list(range(len(events)))
    assert len(pages) >= 3 and all(len(page) <= 2 for page in pages)
    assert [event for page in pages for event in page] == events
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "pageToken"

    types = [event["type"] for event in events]
    assert types[0] == "CREATED"
    for kind in ("LAUNCHED", "STATE_CHANGED", "CHECKPOINT_COMMITTED"):
        assert kind in types
    states = [event["state"] for event in events if event["type"] == "STATE_CHANGED"]
    assert states[-1] == "COMPLETED"

    with grpc.insecure_channel(observed_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        grpc_events: list[pb.JobEvent] = []
        grpc_token = ""
        while True:
            response = stub.ListJobEvents(
                pb.ListJobEventsRequest(job_id=job_id, page_size=3, page_token=grpc_token),
                timeout=30,
            )
            grpc_events.extend(response.events)
            grpc_token = response.next_page_token
            if not grpc_token:
                break
    assert [event.sequence for event in grpc_events] == sequences
    assert [event.type for event in grpc_events] == types

    cli = _cli_events(observed_server, job_id, page_size=2)
    assert [event["sequence"] for event in cli] == sequences
    assert [event["type"] for event in cli] == types


def test_webhook_receiver_gets_the_signed_payload_once(
    observed_run: ObservedRun, webhook_receiver: WebhookReceiver, observed_server: ApiServer
) -> None:
    deliveries = webhook_receiver.wait_for(observed_run.webhook_path)
    assert deliveries, "no webhook arrived"
    time.sleep(2)  # later reconcile passes must not send it again
    deliveries = webhook_receiver.wait_for(observed_run.webhook_path)
    assert len(deliveries) == 1
    delivery = deliveries[0]
    payload = json.loads(delivery.body)
    assert payload["jobId"] == observed_run.job_id
    assert payload["jobName"] == "observed"
    assert payload["state"] == "COMPLETED" and payload["failure"] is None
    assert payload["endedAt"] and payload["modelS3Uri"].endswith("/model/")
    signature = delivery.headers[SIGNATURE_HEADER]
    # Signed with the job's tenant's own secret (development mode: tenant "default"),
    # never with the operator's TUNEFORGE_WEBHOOK_SECRET, which no tenant is shown.
    with observed_server.client() as rest:
        tenant_secret = rest.get("/v1/webhook-secret").json()["secret"]
    assert tenant_secret.startswith("whsec_") and tenant_secret != WEBHOOK_SECRET
    assert verify_signature(tenant_secret, delivery.body, signature)
    tampered = delivery.body.replace(b"COMPLETED", b"FAILED")
    assert not verify_signature(tenant_secret, tampered, signature)
    assert not verify_signature(WEBHOOK_SECRET, delivery.body, signature)


def test_webhook_failing_receiver_is_retried_then_reported(
    observed_server: ApiServer, webhook_receiver: WebhookReceiver
) -> None:
    path = "/fail/always"
    body = demo_job("webhook-fails")
    body["trainingDataConfig"] = {"s3Uri": "s3://demo/datasets/no-such-file.jsonl"}
    body["notifications"] = {"webhookUrl": webhook_receiver.url(path)}
    with observed_server.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        job = observed_server.wait_for(job_id, {"FAILED"}, timeout=120)
        deliveries = webhook_receiver.wait_for(path, count=3)
        assert len(deliveries) == 3  # TUNEFORGE_WEBHOOK_MAX_ATTEMPTS
        assert json.loads(deliveries[0].body)["failure"]["reason"] == job["failure"]["reason"]
        deadline = time.monotonic() + 30
        types: list[str] = []
        while time.monotonic() < deadline and "WEBHOOK_FAILED" not in types:
            events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
            types = [event["type"] for event in events]
            time.sleep(0.3)
    assert "WEBHOOK_FAILED" in types
    failed = next(event for event in events if event["type"] == "WEBHOOK_FAILED")
    assert "HTTP 500" in failed["message"] and "127.0.0.1" in failed["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/hook",
        "ftp://127.0.0.1/hook",
        "http://user:password@127.0.0.1/hook",
    ],
)
def test_webhook_url_on_a_disallowed_host_is_refused_at_create(
    observed_server: ApiServer, url: str
) -> None:
    body = demo_job("webhook-refused")
    body["notifications"] = {"webhookUrl": url}
    with observed_server.client() as client:
        before = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
        response = client.post("/v1/jobs", json=body)
        after = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "notifications.webhookUrl"
    assert len(after) == len(before)  # nothing was created

    with grpc.insecure_channel(observed_server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        request = pb.CreateJobRequest(
            job_name="webhook-refused",
            base_model_identifier=body["baseModelIdentifier"],
            training_data_config=pb.DataConfig(s3_uri=body["trainingDataConfig"]["s3Uri"]),
            output_data_config=pb.DataConfig(s3_uri=body["outputDataConfig"]["s3Uri"]),
            notifications=pb.Notifications(webhook_url=url),
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            fields.append(info.metadata.get("field"))
    assert fields == ["notifications.webhookUrl"]
