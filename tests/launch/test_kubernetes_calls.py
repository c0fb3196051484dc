"""The Kubernetes launcher's calls, as the official client sends them over HTTP, and the
reconciler over a Kubernetes API that answers errors.

There is no Kubernetes API server on these machines. A small HTTP server on loopback
stands in for one: it answers the few calls the launcher makes the way the API server
does (JSON bodies, a uid for a created Job, 500 for a job told to fail) and records
every request, so the tests see the requests themselves: the Job created before its
rendezvous Service, the Service owned by that Job's uid, every attempt's Jobs deleted
(one collection delete by the job's label) when the job ends. The store and the
reconciler are the real ones. None of this has run against a real cluster.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from service.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobResources,
    JobSpec,
    JobState,
    new_job_id,
    utc_now,
)
from service.launch.kubernetes import KubernetesConfig, KubernetesLauncher, job_name
from service.reconcile_faults import FaultTracker
from service.reconciler import Reconciler
from service.storage import ObjectStore
from service.store import JobStore

NAMESPACE = "training"
CONFIG = KubernetesConfig(namespace=NAMESPACE, image="trainer:1", s3_secret_name="tuneforge-s3")


class FakeApiServer:
    """Answers the launcher's calls as the Kubernetes API server would; records them.
    `failing`: Job names whose reads answer 500 (etcd timing out, say)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failing: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *arguments: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": parse_qs(parts.query),
                        "body": body,
                    }
                )
                status, answer = fake.answer(self.command, parts.path, body)
                self._answer(status, answer)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        if method == "POST" and path == jobs:
            created = dict(body)
            created["metadata"] = {**body["metadata"], "uid": f"uid-{uuid.uuid4().hex[:8]}"}
            created["status"] = {"active": body["spec"]["parallelism"]}
            self.jobs[body["metadata"]["name"]] = created
            return 201, created
        if method == "GET" and path.startswith(jobs + "/"):
            name = path.rsplit("/", 1)[1]
            if name in self.failing:
                return 500, _status(500, "etcdserver: request timed out")
            if name not in self.jobs:
                return 404, _status(404, f'jobs.batch "{name}" not found')
            return 200, self.jobs[name]
        if method == "POST" and path == f"/api/v1/namespaces/{NAMESPACE}/services":
            return 201, body
        if method == "DELETE" and path == jobs:
            return 200, _status(200, "")
        return 404, _status(404, f"{method} {path} is not served here")


def _status(code: int, message: str) -> dict[str, Any]:
    reason = {200: "", 404: "NotFound", 500: "InternalError"}[code]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Success" if code == 200 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    fake.thread.start()
    yield fake
    fake.server.shutdown()


def _launcher(api: FakeApiServer) -> KubernetesLauncher:
    configuration = client.Configuration()
    configuration.host = api.url
    return KubernetesLauncher(CONFIG, api_client=client.ApiClient(configuration))


def _spec(nodes: int = 1) -> JobSpec:
    return JobSpec(
        jobId=new_job_id(),
        jobName="k8s-calls",
        createdAt=utc_now(),
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
        resources=JobResources(gpus=1, nodes=nodes),
    )


def test_a_multi_node_attempt_creates_its_job_then_a_service_the_job_owns(
    api: FakeApiServer,
) -> None:
    spec = _spec(nodes=2)
    started = _launcher(api).start(spec, 1, {"TUNEFORGE_STATE_BUCKET": "state"})
    name = job_name(spec.jobId, 1)
    assert started.host == f"{NAMESPACE}/{name}"
    calls = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in api.requests]
    assert calls == [("POST", "jobs"), ("GET", name), ("POST", "services")]
    job = api.requests[0]["body"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    service = api.requests[2]["body"]
    (owner,) = service["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Job", name)
    assert owner["uid"] == api.jobs[name]["metadata"]["uid"]


def test_release_deletes_every_attempts_job_by_the_jobs_label(api: FakeApiServer) -> None:
    job_id = new_job_id()
    _launcher(api).release(job_id)
    (request,) = api.requests
    assert (request["method"], request["path"]) == (
        "DELETE",
        f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
    )
    assert request["query"]["labelSelector"] == [f"tuneforge.io/job-id={job_id}"]
    assert request["body"]["propagationPolicy"] == "Background"  # pods and Services too
    with pytest.raises(ValueError, match="not a job id"):
        _launcher(api).release("../../everything")


@pytest.mark.timeout(120)
def test_an_api_answering_500_about_one_job_fails_that_job_only(
    api: FakeApiServer, object_store: ObjectStore
) -> None:
    """The reconciler over the Kubernetes launcher: reads of one job's Job answer 500.
    That job is failed after the give-up count, naming the call and the API's answer, and
    its Jobs are deleted when it is retired; the other job's trainer is observed running
    all along."""
    bucket = f"k8s-{uuid.uuid4().hex[:12]}"
    object_store.ensure_bucket(bucket)
    store = JobStore(object_store, bucket)
    broken, healthy = _spec(), _spec()
    store.create(broken)
    store.create(healthy)
    api.failing.add(job_name(broken.jobId, 1))
    reconciler = Reconciler(
        store,
        _launcher(api),
        {},
        slots=10,
        faults=FaultTracker(give_up_after_failures=4, give_up_after_seconds=0),
    )
    deadline = time.monotonic() + 60
    while store.get_status(broken.jobId)[0].state != JobState.FAILED:
        assert time.monotonic() < deadline
        reconciler.run_once()
    status = store.get_status(broken.jobId)[0]
    assert status.failure is not None and status.failure.reason == FailureReason.INTERNAL
    assert (  # the API's answer in one line: no response headers in a user's message
        "the kubernetes launcher's observe failed: ServiceException: HTTP 500 Internal Server "
        "Error: etcdserver: request timed out"
    ) in status.failure.message
    assert "\n" not in status.failure.message
    assert "4 reconcile passes in a row" in status.failure.message
    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    deleted = [r for r in api.requests if r["method"] == "DELETE"]
    # Given up on: its trainer's Job is deleted with no grace (SIGKILL), then every
    # attempt's Job by the job's label as it is retired.
    assert deleted[0]["path"] == f"{jobs}/{job_name(broken.jobId, 1)}"
    assert deleted[0]["body"]["gracePeriodSeconds"] == 0
    released = [r["query"]["labelSelector"] for r in deleted if r["path"] == jobs]
    assert released == [[f"tuneforge.io/job-id={broken.jobId}"]]
    assert broken.jobId not in store.list_active_job_ids()
    # The other job was launched and is alive, untouched by its neighbour's faults.
    assert store.get_status(healthy.jobId)[0].launch is not None
    assert not store.get_status(healthy.jobId)[0].state.is_terminal()
    assert healthy.jobId in store.list_active_job_ids()
