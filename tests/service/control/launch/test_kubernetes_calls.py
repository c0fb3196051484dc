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
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from jobstore.documents import (
    DataLocation,
    FailureReason,
    HyperParameters,
    JobResources,
    JobSpec,
    JobState,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from service.control.launch.kubernetes import KubernetesConfig, KubernetesLauncher, job_name
from service.control.reconcile_faults import FaultTracker
from service.control.reconciler import Reconciler
from service.observability.metrics import Metrics
from tests.prometheus_text import samples

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
                status, answer = fake.answer(self.command, parts.path, body, parse_qs(parts.query))
                self._answer(status, answer)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(
        self, method: str, path: str, body: Any, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        if method == "POST" and path == jobs:
            created = dict(body)
            created["metadata"] = {**body["metadata"], "uid": f"uid-{uuid.uuid4().hex[:8]}"}
            created["status"] = {"active": body["spec"]["parallelism"]}
            self.jobs[body["metadata"]["name"]] = created
            return 201, created
        if method == "GET" and path == jobs:  # a listing by the job's label
            wanted = dict([query["labelSelector"][0].split("=", 1)])
            items = [
                job
                for job in self.jobs.values()
                if wanted.items() <= job["metadata"]["labels"].items()
            ]
            return 200, {"apiVersion": "batch/v1", "kind": "JobList", "items": items}
        if method == "DELETE" and path.startswith(jobs + "/"):
            self.jobs.pop(path.rsplit("/", 1)[1], None)
            return 200, _status(200, "")
        if method == "GET" and path.startswith(jobs + "/"):
            name = path.rsplit("/", 1)[1]
            if name in self.failing:
                return 500, _status(500, "etcdserver: request timed out")
            if name not in self.jobs:
                return 404, _status(404, f'jobs.batch "{name}" not found')
            return 200, self.jobs[name]
        if method == "POST" and path == f"/api/v1/namespaces/{NAMESPACE}/services":
            return 201, body
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


def test_release_deletes_the_finished_jobs_of_every_attempt_only(api: FakeApiServer) -> None:
    spec = _spec()
    launcher = _launcher(api)
    for attempt in (1, 2, 3):
        launcher.start(spec, attempt, {})
    finished = {"conditions": [{"type": "Failed", "status": "True"}]}
    api.jobs[job_name(spec.jobId, 1)]["status"] = finished
    api.jobs[job_name(spec.jobId, 2)]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]
    }
    other = _spec()
    launcher.start(other, 1, {})
    api.jobs[job_name(other.jobId, 1)]["status"] = finished
    api.requests.clear()

    launcher.release(spec.jobId)
    (listing,) = [r for r in api.requests if r["method"] == "GET"]
    assert listing["query"]["labelSelector"] == [f"tuneforge.io/job-id={spec.jobId}"]
    deleted = [r for r in api.requests if r["method"] == "DELETE"]
    assert [r["path"].rsplit("/", 1)[1] for r in deleted] == [
        job_name(spec.jobId, 1),
        job_name(spec.jobId, 2),
    ]  # attempt 3 still runs (its TTL deletes it once it ends); another job untouched
    assert all(r["body"]["propagationPolicy"] == "Background" for r in deleted)
    assert set(api.jobs) == {job_name(spec.jobId, 3), job_name(other.jobId, 1)}
    with pytest.raises(ValueError, match="not a job id"):
        launcher.release("../../everything")


def _store(object_store: ObjectStore) -> JobStore:
    bucket = f"k8s-{uuid.uuid4().hex[:12]}"
    object_store.ensure_bucket(bucket)
    return JobStore(object_store, bucket)


@pytest.mark.timeout(120)
def test_an_api_answering_500_about_one_job_fails_that_job_only(
    api: FakeApiServer, object_store: ObjectStore
) -> None:
    """The reconciler over the Kubernetes launcher: reads of one job's Job answer 500.
    A job created meanwhile launches; the broken one is failed after the give-up count,
    naming the call and the API's answer, its Job deleted (SIGKILL); the other jobs'
    trainers are observed running all along."""
    store = _store(object_store)
    broken, healthy, later = _spec(), _spec(), _spec()
    store.create(broken)
    store.create(healthy)
    reconciler = Reconciler(
        store,
        _launcher(api),
        {},
        slots=3,
        faults=FaultTracker(give_up_after_failures=4, give_up_after_seconds=0),
    )
    reconciler.run_once()  # both launched
    api.failing.add(job_name(broken.jobId, 1))
    reconciler.run_once()  # the broken job's first failure
    store.create(later)
    reconciler.run_once()  # its second: the later job launches all the same
    assert store.get_status(later.jobId)[0].launch is not None
    assert store.get_status(broken.jobId)[0].state == JobState.QUEUED  # not given up yet
    for _ in range(2):
        reconciler.run_once()
    status = store.get_status(broken.jobId)[0]
    assert status.state == JobState.FAILED
    assert status.failure is not None and status.failure.reason == FailureReason.INTERNAL
    assert (  # the API's answer in one line: no response headers in a user's message
        "the kubernetes launcher's observe failed: ServiceException: HTTP 500 Internal Server "
        "Error: etcdserver: request timed out"
    ) in status.failure.message
    assert "\n" not in status.failure.message
    assert "4 reconcile passes in a row" in status.failure.message
    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    deleted = [r for r in api.requests if r["method"] == "DELETE"]
    # Given up on: its trainer's Job is deleted with no grace (SIGKILL); then, retired,
    # its Jobs are looked up by the job's label (none finished left to delete).
    assert deleted[0]["path"] == f"{jobs}/{job_name(broken.jobId, 1)}"
    assert deleted[0]["body"]["gracePeriodSeconds"] == 0
    listed = [r["query"].get("labelSelector") for r in api.requests if r["path"] == jobs]
    assert [f"tuneforge.io/job-id={broken.jobId}"] in listed
    assert broken.jobId not in store.list_active_job_ids()
    for other in (healthy, later):  # launched and alive, untouched by the faults
        assert store.get_status(other.jobId)[0].launch is not None
        assert not store.get_status(other.jobId)[0].state.is_terminal()


@pytest.mark.timeout(120)
def test_an_api_outage_fails_no_job(api: FakeApiServer, object_store: ObjectStore) -> None:
    """Every launched job's Job answers 500: the API is out, not the jobs. Counted as
    `launcher_unavailable`, never towards giving up, so none is failed however long it
    lasts; a queued job does not take a slot a running job may hold; all go on after."""
    store = _store(object_store)
    first, second, queued = _spec(), _spec(), _spec()
    store.create(first)
    store.create(second)
    metrics = Metrics()
    reconciler = Reconciler(
        store,
        _launcher(api),
        {},
        slots=2,
        metrics=metrics,
        faults=FaultTracker(give_up_after_failures=2, give_up_after_seconds=0),
    )
    reconciler.run_once()  # both launched
    api.failing.update({job_name(first.jobId, 1), job_name(second.jobId, 1)})
    store.create(queued)
    for _ in range(6):
        reconciler.run_once()
    for job in (first, second):
        status = store.get_status(job.jobId)[0]
        assert status.launch is not None and not status.state.is_terminal()
    assert store.get_status(queued.jobId)[0].launch is None  # both slots stay held
    text = metrics.exposition()[0].decode()
    assert samples(text, "tuneforge_reconcile_errors_total", reason="launcher_unavailable") == [
        12.0
    ]
    assert samples(text, "tuneforge_reconcile_errors_total", reason="launcher") == []
    api.failing.clear()  # the API is back
    reconciler.run_once()
    assert reconciler.faults.fault(first.jobId) is None
